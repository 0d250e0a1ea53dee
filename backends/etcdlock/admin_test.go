package etcdlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
)

// Issue 21.9: lock.Open does not wait for a connection, so a readiness
// probe needs Ping, and Ping must fail for a server that is not there.
func TestPingUnreachable(t *testing.T) {
	b, err := lock.Open(t.Context(), "etcd://127.0.0.1:1?dial_timeout=1s")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if err := lock.Ping(ctx, b); err == nil {
		t.Fatal("Ping of a Locker on a port nothing listens on succeeded")
	}
	_ = b.Close()
	live := newLocker(t, nil, etcdlock.WithPrefix(testPrefix(t)))
	if err := lock.Ping(t.Context(), live); err != nil {
		t.Fatalf("Ping of the test server: %v", err)
	}
	_ = live.Close()
	if err := lock.Ping(t.Context(), live); !errors.Is(err, etcdlock.ErrClosed) {
		t.Fatalf("Ping after Close: %v, want ErrClosed", err)
	}
}

// Issue 21.4: a lease watches its key (lock.LossNotifier), so a holder
// learns that its key was deleted by hand within one watch event, not at
// its next refresh (a third of the TTL later).
func TestLossDetection(t *testing.T) {
	l := newLocker(t, nil, etcdlock.WithPrefix(testPrefix(t)))
	testenv.LossDetection(t, l, "k", lock.DefaultTTL, conformance.SchedulingSlack)
}
