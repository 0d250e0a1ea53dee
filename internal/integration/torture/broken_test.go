package torture

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
)

// A harness that never fails proves nothing: these tests run it against
// small in-memory Lockers that are correct but for one deliberate flaw, and
// check that the check named for each flaw reports it, while the same
// table without a flaw passes every check.

// brokenTable is an in-memory Locker with TTLs and fencing tokens.
type brokenTable struct {
	flaw string
	mu   sync.Mutex
	held map[string]*brokenLease
	last map[string]uint64 // per key: the last token handed out
}

// The flaws.
const (
	flawNone         = "none"
	flawNoOwnerCheck = "no owner check"        // release and refresh act on whoever holds the key
	flawTokenReset   = "token reset at expiry" // the key's token counter is forgotten when it expires
	flawRefreshLate  = "refresh after expiry"  // refresh brings an expired lease back
	flawStaleToken   = "token reused"          // a take after an expiry gets the expired lease's token
)

func newBrokenTable(flaw string) *brokenTable {
	return &brokenTable{flaw: flaw, held: map[string]*brokenLease{}, last: map[string]uint64{}}
}

type brokenLease struct {
	t        *brokenTable
	key      string
	token    uint64
	deadline time.Time
	released bool
}

func (le *brokenLease) live() bool { return le != nil && time.Now().Before(le.deadline) }

func (b *brokenTable) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if err := lock.CheckArgs(ctx, key, ttl); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.held[key]
	if old.live() {
		return nil, &lock.NotAcquiredError{Key: key, Remaining: time.Until(old.deadline)}
	}
	expired := old != nil && !old.released
	switch {
	case b.flaw == flawTokenReset && expired:
		b.last[key] = 0
	case b.flaw == flawStaleToken && expired:
		b.last[key] = old.token - 1
	}
	b.last[key]++
	le := &brokenLease{t: b, key: key, token: b.last[key], deadline: time.Now().Add(ttl)}
	b.held[key] = le
	return le, nil
}

func (le *brokenLease) Key() string   { return le.key }
func (le *brokenLease) Token() uint64 { return le.token }

func (le *brokenLease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	b := le.t
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.held[le.key]
	switch {
	case b.flaw == flawNoOwnerCheck && cur != nil:
		cur.deadline = time.Now().Add(ttl)
		return nil
	case b.flaw == flawRefreshLate && (cur == le || !cur.live()):
		le.deadline = time.Now().Add(ttl)
		b.held[le.key] = le
		return nil
	case cur != le || !le.live():
		return lock.ErrNotHeld
	}
	le.deadline = time.Now().Add(ttl)
	return nil
}

func (le *brokenLease) Release(ctx context.Context) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	b := le.t
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.held[le.key]
	if b.flaw == flawNoOwnerCheck && cur != nil {
		delete(b.held, le.key)
		return nil
	}
	if cur != le || !le.live() {
		return lock.ErrNotHeld
	}
	// The holder is kept, so that the next take knows the key was
	// released rather than expired.
	le.deadline, le.released = time.Time{}, true
	return nil
}

// brokenRun tortures a broken table with stalled holders, which let leases
// expire inside critical sections. Two workload mixes alternate: a busy key
// with critical sections about as long as the stall, so that a stalled
// holder wakes while the next holder is still writing, and quiet keys, so
// that it often wakes to find its key free.
func brokenRun(t *testing.T, flaw string) *Report {
	t.Helper()
	table := newBrokenTable(flaw)
	// A TTL of many scheduling delays of a loaded machine: the flawless
	// table must never lose a lease its KeepAlive renews.
	const ttl = 300 * time.Millisecond
	cfg := Config{
		Backend:     Backend{Name: "broken: " + flaw, Open: func() (lock.Locker, error) { return table, nil }, TTL: ttl, Slack: 10 * time.Millisecond},
		Workload:    Workload{Keys: 3, Writes: 3, Hold: ttl / 5},
		Workers:     4,
		Faults:      []Fault{StallHolder(2, 3*ttl/2), StallHolder(1, 3*ttl)},
		Settle:      3 * ttl,
		MinDuration: 5 * time.Second,
	}
	r, err := Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	rep := Check(r, CheckOptions{LinearTimeout: 20 * time.Second, VisualDir: t.TempDir(), VisualName: strings.ReplaceAll(flaw, " ", "-")})
	t.Logf("%s: %d takes, %d stalled-holder faults", flaw, rep.Takes, len(rep.Faults))
	for _, c := range rep.Checks() {
		t.Logf("  %s: %d violations", c.Name, len(c.Violations))
		for i, v := range c.Violations {
			if i < 2 {
				t.Logf("    %s", v.What)
			}
		}
	}
	return rep
}

func TestHarnessBites(t *testing.T) {
	// Each flaw, and the checks that must report it.
	cases := map[string][]string{
		flawNone:         nil,
		flawNoOwnerCheck: {CheckExclusion, CheckLinear},
		flawTokenReset:   {CheckTokenOrder, CheckLinear},
		flawRefreshLate:  {CheckLinear},
		flawStaleToken:   {CheckFenced, CheckTokenOrder, CheckLinear},
	}
	for flaw, want := range cases {
		t.Run(strings.ReplaceAll(flaw, " ", "_"), func(t *testing.T) {
			t.Parallel()
			// Whether a stall catches a flaw depends on what the other
			// workers do meanwhile: a flaw gets up to four runs.
			reported := map[string]bool{}
			for range 4 {
				rep := brokenRun(t, flaw)
				if rep.Takes == 0 {
					t.Fatal("no takes")
				}
				for _, c := range rep.Checks() {
					if len(c.Failures()) > 0 {
						reported[c.Name] = true
					}
				}
				if flaw == flawNone || allOf(reported, want) {
					break
				}
			}
			for _, c := range want {
				if !reported[c] {
					t.Errorf("flaw %q: check %q reported nothing", flaw, c)
				}
			}
			if flaw == flawNone {
				for c := range reported {
					t.Errorf("the flawless table failed check %q", c)
				}
			}
		})
	}
}

func allOf(set map[string]bool, want []string) bool {
	for _, w := range want {
		if !set[w] {
			return false
		}
	}
	return true
}
