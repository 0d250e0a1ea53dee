package memcachedlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
)

// Issue 21.9: lock.Open makes no request, so a readiness probe needs Ping,
// and Ping must fail for a server that is not there.
func TestPingUnreachable(t *testing.T) {
	b, err := lock.Open(t.Context(), "memcached://127.0.0.1:1?timeout=500ms")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := lock.Ping(ctx, b); err == nil {
		t.Fatal("Ping of a Locker on a port nothing listens on succeeded")
	}
	_ = b.Close()
	live := newLocker(t)
	if err := lock.Ping(ctx, live); err != nil {
		t.Fatalf("Ping of the test server: %v", err)
	}
	_ = live.Close()
	if err := lock.Ping(ctx, live); !errors.Is(err, memcachedlock.ErrClosed) {
		t.Fatalf("Ping after Close: %v, want ErrClosed", err)
	}
}

// Issue 21.4: memcached cannot tell anyone that an item was deleted, so the
// holder learns of a ForceRelease at its next refresh: within the refresh
// interval (a third of the TTL) and one round trip (a gets that misses).
func TestLossDetection(t *testing.T) {
	ttl := lock.DefaultTTL
	testenv.LossDetection(t, newLocker(t), t.Name(), ttl, ttl/3+conformance.SchedulingSlack)
}
