package etcdlock_test

import (
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
)

// A Locker that takes one lock at a time renews its pooled leases once per
// slack, not twice. A pooled lease serves a take only within the slack
// after its grant or renewal. Before, the take that renewed a stale lease
// in line also had the pool renew a second one in the background: both
// then went stale together, so the first take a slack later renewed in
// line again, and again beside a second one. On a hot key's waiters
// (issue 19) that was two keep-alives per Locker and second, one of them
// on a hand-off's critical path. Now a lease renewed in line is the only
// one renewed; the pool renews another in the background only when the
// lease it hands out is in the last quarter of its usable time, so that
// the next take finds a fresh one.
//
// The steps are timed against the pooled leases' own renewal times (the
// lease's Deadline), not used as synchronisation: what is counted is the
// renewals that the passing of the slack causes. On main's code the three
// takes after the pool went stale cost 4 keep-alives (2 in line); now 2
// (1 in line, and the last take none).
func TestPoolRenewsOncePerSlack(t *testing.T) {
	var c counter
	// The slack (1 s) is the usable time of a pooled lease; the TTL (3 s)
	// keeps a stale one renewable (etcd drops it 0.5 s before its expiry)
	// long after it went stale.
	const ttl, slack = 3 * time.Second, time.Second
	l := newLocker(t, &c, etcdlock.WithPrefix(testPrefix(t)), etcdlock.WithTTLSlack(slack))
	ctx := t.Context()
	take := func() time.Time {
		t.Helper()
		le, err := l.TryAcquire(ctx, "k", ttl)
		if err != nil {
			t.Fatal(err)
		}
		dl := le.(lock.Deadliner).Deadline()
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
		etcdlock.Quiesce(l)
		return dl
	}
	sleepUntil := func(at time.Time) {
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
	}

	take() // cold: a grant in line and one in the background
	// Both pooled leases were granted by now: let them go stale.
	sleepUntil(time.Now().Add(slack + slack/5))
	grants, kas := c.method("LeaseGrant"), c.method("LeaseKeepAlive")

	// The Locker comes back: its take renews a stale lease in line.
	dl := take()
	usableUntil := dl.Add(-ttl) // the lease's expiry less the TTL
	// A take in the last quarter of that lease's usable time renews the
	// other one in the background.
	sleepUntil(usableUntil.Add(-slack / 8))
	take()
	// A take after the first lease went stale finds the other one fresh.
	sleepUntil(usableUntil.Add(slack / 5))
	before := c.method("LeaseKeepAlive")
	take()
	last := c.method("LeaseKeepAlive") - before

	if g := c.method("LeaseGrant") - grants; g != 0 {
		t.Errorf("three takes with a warm pool granted %d leases, want 0", g)
	}
	if n := c.method("LeaseKeepAlive") - kas; n > 2 {
		t.Errorf("three takes over a little more than one slack, after the pool went stale, renewed pooled leases %d times, want at most 2 (one in line after the idle time, one in the background)", n)
	}
	if last != 0 {
		t.Errorf("a take a slack after the one that renewed a stale lease renewed %d leases, want 0: the take before it, late in that lease's usable time, should have had another renewed in the background", last)
	}
}
