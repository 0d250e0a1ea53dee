package etcdlock_test

import (
	"testing"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
)

// Issue 21.9: lock.Open does not wait for a connection, so a readiness
// probe needs Ping, and Ping must fail for a server that is not there.
func TestPingUnreachable(t *testing.T) {
	testenv.CheckPing(t, "etcd://127.0.0.1:1?dial_timeout=1s", newLocker(t, nil, etcdlock.WithPrefix(testPrefix(t))), etcdlock.ErrClosed)
}

// Issue 21.4: a lease watches its key (lock.LossNotifier), so a holder
// learns that its key was deleted by hand within one watch event, not at
// its next refresh (a third of the TTL later).
func TestLossDetection(t *testing.T) {
	l := newLocker(t, nil, etcdlock.WithPrefix(testPrefix(t)))
	testenv.LossDetection(t, l, "k", lock.DefaultTTL, conformance.SchedulingSlack)
}
