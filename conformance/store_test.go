package conformance_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
)

// fakeStore is a small, correct idempotency.Store with switchable bugs, to
// prove that RunStore catches broken backends.
type fakeStore struct {
	bug     string
	mu      sync.Mutex
	held    map[string]*fakeLease
	records map[string]fakeRecord
	next    uint64
}

type fakeRecord struct {
	data     []byte
	deadline time.Time
}

type fakeLease struct {
	s        *fakeStore
	key      string
	token    uint64
	deadline time.Time
}

func newFakeStore(bug string) *fakeStore {
	return &fakeStore{bug: bug, held: map[string]*fakeLease{}, records: map[string]fakeRecord{}}
}

func (s *fakeStore) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	le, _, err := s.Claim(ctx, key, ttl)
	return le, err
}

func (s *fakeStore) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	if err := lock.CheckArgs(ctx, key, ttl); err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	now := time.Now()
	if r, ok := s.records[key]; ok && (s.bug == "records never expire" || now.Before(r.deadline)) {
		s.mu.Unlock()
		return nil, bytes.Clone(r.data), nil
	}
	cur := s.held[key]
	free := cur == nil || !now.Before(cur.deadline)
	if s.bug == "claim not atomic" {
		s.mu.Unlock()
		runtime.Gosched()
		time.Sleep(time.Millisecond)
		s.mu.Lock()
	}
	defer s.mu.Unlock()
	if !free {
		return nil, nil, &lock.NotAcquiredError{Key: key}
	}
	s.next++
	le := &fakeLease{s: s, key: key, token: s.next, deadline: now.Add(ttl)}
	s.held[key] = le
	return le, nil, nil
}

func (s *fakeStore) Complete(ctx context.Context, l lock.Lease, rec []byte, retention time.Duration) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	le, ok := l.(*fakeLease)
	if !ok || retention <= 0 {
		return fmt.Errorf("%w: bad Complete", lock.ErrInvalidArgument)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if !le.owns(now) && s.bug != "complete not owner-checked" {
		return lock.ErrNotHeld
	}
	if s.bug == "oversize ends lease" && len(rec) > 1<<20 {
		delete(s.held, le.key)
		return lock.ErrNotHeld
	}
	if s.bug != "complete keeps lease" {
		delete(s.held, le.key)
	}
	keep := now.Add(retention)
	if s.bug == "record lives as long as the lease" {
		keep = le.deadline
	}
	s.records[le.key] = fakeRecord{data: bytes.Clone(rec), deadline: keep}
	return nil
}

// owns reports whether le is the live holder of its key. s.mu is held.
func (le *fakeLease) owns(now time.Time) bool {
	return le.s.held[le.key] == le && now.Before(le.deadline)
}

func (le *fakeLease) Key() string   { return le.key }
func (le *fakeLease) Token() uint64 { return le.token }
func (le *fakeLease) Refresh(ctx context.Context, ttl time.Duration) error {
	le.s.mu.Lock()
	defer le.s.mu.Unlock()
	if !le.owns(time.Now()) {
		return lock.ErrNotHeld
	}
	le.deadline = time.Now().Add(ttl)
	return nil
}
func (le *fakeLease) Release(ctx context.Context) error {
	le.s.mu.Lock()
	defer le.s.mu.Unlock()
	if !le.owns(time.Now()) {
		return lock.ErrNotHeld
	}
	delete(le.s.held, le.key)
	return nil
}

const brokenEnv = "IDEMLOCK_CONFORMANCE_BROKEN_STORE"

func runFake(t *testing.T, bug string) {
	s := newFakeStore(bug)
	conformance.RunStore(t, conformance.StoreConfig{
		NewStore:       func(*testing.T) idempotency.Store { return s },
		TTLGranularity: time.Millisecond,
	})
}

func TestRunStoreOnCorrectStore(t *testing.T) {
	if os.Getenv(brokenEnv) != "" {
		t.Skip("helper process")
	}
	runFake(t, "")
}

// TestBrokenStoreHelper runs the suite on a broken store when the parent
// test asks for it.
func TestBrokenStoreHelper(t *testing.T) {
	bug := os.Getenv(brokenEnv)
	if bug == "" {
		return
	}
	runFake(t, bug)
}

// A suite that never fails proves nothing: each broken store must fail the
// clause that describes its bug.
func TestRunStoreCatchesBrokenStores(t *testing.T) {
	if os.Getenv(brokenEnv) != "" {
		t.Skip("helper process")
	}
	for bug, clause := range map[string]string{
		"claim not atomic":                  "ClaimOneWinner",
		"complete not owner-checked":        "StaleCompleteOwnerChecked",
		"complete keeps lease":              "CompleteEndsLease",
		"record lives as long as the lease": "RecordOutlivesLease",
		"records never expire":              "RecordRetention",
		"oversize ends lease":               "OversizeRecordKeepsLease",
	} {
		t.Run(strings.ReplaceAll(bug, " ", "_"), func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenStoreHelper$", "-test.v")
			cmd.Env = append(os.Environ(), brokenEnv+"="+bug)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("RunStore passed a store whose %s:\n%s", bug, out)
			}
			want := "--- FAIL: TestBrokenStoreHelper/" + clause
			if !strings.Contains(string(out), want) || !strings.Contains(string(out), "contract clause violated") {
				t.Fatalf("a store whose %s did not fail %s with a named clause:\n%s", bug, clause, out)
			}
		})
	}
}
