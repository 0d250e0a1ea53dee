package redislock_test

import (
	"context"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
)

// Issue 21.9: lock.Open does not dial, so a readiness probe needs Ping,
// and Ping must fail for a server that is not there.
func TestPingUnreachable(t *testing.T) {
	b, err := lock.Open(t.Context(), "redis://127.0.0.1:1?dial_timeout=1s")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := lock.Ping(ctx, b); err == nil {
		t.Fatal("Ping of a Locker on a port nothing listens on succeeded")
	}
	live := single.newLocker(t, nil)
	if err := lock.Ping(ctx, live); err != nil {
		t.Fatalf("Ping of the test server: %v", err)
	}
}

// Issue 21.4: Redis tells nobody that a key was deleted (keyspace
// notifications need server configuration), so the holder learns of a
// ForceRelease at its next refresh: within the refresh interval (a third
// of the TTL) and one round trip.
func TestLossDetection(t *testing.T) {
	ttl := lock.DefaultTTL
	testenv.LossDetection(t, single.newLocker(t, nil), t.Name(), ttl, ttl/3+conformance.SchedulingSlack)
}
