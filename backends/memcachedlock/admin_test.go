package memcachedlock_test

import (
	"testing"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
)

// Issue 21.9: lock.Open makes no request, so a readiness probe needs Ping,
// and Ping must fail for a server that is not there.
func TestPingUnreachable(t *testing.T) {
	testenv.CheckPing(t, "memcached://127.0.0.1:1?timeout=500ms", newLocker(t), memcachedlock.ErrClosed)
}

// Issue 21.4: memcached cannot tell anyone that an item was deleted, so the
// holder learns of a ForceRelease at its next refresh: within the refresh
// interval (a third of the TTL) and one round trip (a gets that misses).
func TestLossDetection(t *testing.T) {
	ttl := lock.DefaultTTL
	testenv.LossDetection(t, newLocker(t), t.Name(), ttl, ttl/3+conformance.SchedulingSlack)
}
