package redislock_test

import (
	"testing"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
)

// Issue 21.9: lock.Open does not dial, so a readiness probe needs Ping,
// and Ping must fail for a server that is not there.
func TestPingUnreachable(t *testing.T) {
	testenv.CheckPing(t, "redis://127.0.0.1:1?dial_timeout=1s", single.newLocker(t, nil), nil)
}

// Issue 21.4: Redis tells nobody that a key was deleted (keyspace
// notifications need server configuration), so the holder learns of a
// ForceRelease at its next refresh: within the refresh interval (a third
// of the TTL) and one round trip.
func TestLossDetection(t *testing.T) {
	ttl := lock.DefaultTTL
	testenv.LossDetection(t, single.newLocker(t, nil), t.Name(), ttl, ttl/3+conformance.SchedulingSlack)
}
