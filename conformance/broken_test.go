package conformance_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
)

// A suite that never fails proves nothing. These tests run the suite, in a
// child test process, against deliberately broken Lockers and check that it
// fails each one, naming the clause that was broken.

// flaws maps each deliberate defect to a clause the suite must report.
var flaws = map[string]string{
	"nonatomic-take":       "exactly one of many concurrent takers wins",
	"unchecked-release":    "a stale lease's release never frees a newer holder",
	"no-expiry":            "a lease is held until its TTL and freed after it",
	"tokens-backwards":     "fencing tokens strictly increase across holders",
	"refresh-after-expiry": "refresh and release after expiry report ErrNotHeld and change nothing",
	"unchecked-refresh":    "a stale lease's refresh never extends a newer holder",
	"reused-tokens":        "fencing tokens strictly increase across expiry",
	"ignores-cancel":       "a cancelled context is honoured promptly",
}

const flawEnv = "IDEMLOCK_CONFORMANCE_FLAW"

func TestSuiteCatchesBrokenBackends(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the suite once per flaw")
	}
	t.Run("none", func(t *testing.T) {
		// The same table without a flaw must pass, or the failures below
		// would prove nothing about the flaws.
		t.Parallel()
		if out, err := runWithFlaw(t, "none"); err != nil {
			t.Fatalf("the suite failed the flawless table: %v\n%s", err, out)
		}
	})
	for flaw, clause := range flaws {
		t.Run(flaw, func(t *testing.T) {
			t.Parallel()
			out, err := runWithFlaw(t, flaw)
			if err == nil {
				t.Fatalf("the suite passed a backend with the flaw %q:\n%s", flaw, out)
			}
			want := "contract clause violated: " + clause
			if !strings.Contains(string(out), want) {
				t.Fatalf("the suite failed the %q backend, but not with %q:\n%s", flaw, want, out)
			}
		})
	}
}

func runWithFlaw(t *testing.T, flaw string) ([]byte, error) {
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestBrokenBackend$", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), flawEnv+"="+flaw)
	return cmd.CombinedOutput()
}

// TestBrokenBackend is the child process of TestSuiteCatchesBrokenBackends:
// it runs the suite on the broken Locker named by the environment, and
// does nothing in a normal test run.
func TestBrokenBackend(t *testing.T) {
	flaw := os.Getenv(flawEnv)
	if flaw == "" {
		return
	}
	if _, ok := flaws[flaw]; !ok && flaw != "none" {
		t.Fatalf("unknown flaw %q", flaw)
	}
	table := &brokenTable{flaw: flaw, held: map[string]*brokenLease{}, last: map[string]uint64{}}
	conformance.Run(t, conformance.Config{
		NewLocker:      func(*testing.T) lock.Locker { return table },
		TTLGranularity: time.Millisecond,
	})
}

// brokenTable is a small in-memory Locker that is correct except for one
// deliberate flaw.
type brokenTable struct {
	flaw string
	mu   sync.Mutex
	held map[string]*brokenLease
	last map[string]uint64
	next uint64
}

type brokenLease struct {
	t        *brokenTable
	key      string
	token    uint64
	deadline time.Time
}

func (b *brokenTable) live(le *brokenLease) bool {
	return le != nil && (b.flaw == "no-expiry" || time.Now().Before(le.deadline))
}

func (b *brokenTable) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if b.flaw == "ignores-cancel" {
		if err := lock.ValidateKey(key); err != nil {
			return nil, err
		}
		if err := lock.ValidateTTL(ttl); err != nil {
			return nil, err
		}
	} else if err := lock.CheckArgs(ctx, key, ttl); err != nil {
		return nil, err
	}
	b.mu.Lock()
	free := !b.live(b.held[key])
	b.mu.Unlock()
	if !free {
		return nil, &lock.NotAcquiredError{Key: key}
	}
	if b.flaw == "nonatomic-take" {
		time.Sleep(time.Millisecond) // check, then set: the window is the flaw
	} else {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.live(b.held[key]) {
			return nil, &lock.NotAcquiredError{Key: key}
		}
	}
	if b.flaw == "nonatomic-take" {
		b.mu.Lock()
		defer b.mu.Unlock()
	}
	b.next++
	token := b.next
	switch b.flaw {
	case "tokens-backwards":
		token = 1 << 40 / b.next
	case "reused-tokens":
		// Per-key counter that forgets the key once it expires.
		if old := b.held[key]; old == nil || !b.live(old) {
			b.last[key] = 0
		}
		b.last[key]++
		token = b.last[key]
	}
	le := &brokenLease{t: b, key: key, token: token, deadline: time.Now().Add(ttl)}
	b.held[key] = le
	return le, nil
}

func (le *brokenLease) Key() string   { return le.key }
func (le *brokenLease) Token() uint64 { return le.token }

func (le *brokenLease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckContext(ctx); err != nil && le.t.flaw != "ignores-cancel" {
		return err
	}
	if err := lock.ValidateTTL(ttl); err != nil {
		return err
	}
	b := le.t
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.held[le.key]
	switch {
	case b.flaw == "unchecked-refresh" && cur != nil:
		cur.deadline = time.Now().Add(ttl) // extends whoever holds the key
		return nil
	case b.flaw == "refresh-after-expiry" && (cur == le || cur == nil || !b.live(cur)):
		le.deadline = time.Now().Add(ttl) // resurrects an expired lease
		b.held[le.key] = le
		return nil
	case cur != le || !b.live(le):
		return lock.ErrNotHeld
	}
	le.deadline = time.Now().Add(ttl)
	return nil
}

func (le *brokenLease) Release(ctx context.Context) error {
	if err := lock.CheckContext(ctx); err != nil && le.t.flaw != "ignores-cancel" {
		return err
	}
	b := le.t
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.held[le.key]
	if b.flaw == "unchecked-release" && cur != nil {
		delete(b.held, le.key) // deletes whoever holds the key
		return nil
	}
	if cur != le || !b.live(le) {
		return lock.ErrNotHeld
	}
	delete(b.held, le.key)
	return nil
}
