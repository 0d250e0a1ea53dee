package memcachedlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/internal/testenv"
)

// A restart loses every lock and every token counter. Held leases must then
// say truthfully that they are not held (not a connection error: the client's
// pooled connections are all dead, and a read is retried on a fresh one),
// keep-alive must notice, and the next tokens must still be greater. The
// restart disrupts everyone on the server, so it is one short test.
func TestServerRestartMidHold(t *testing.T) {
	_ = testenv.MemcachedAddr(t)
	holder, other := newLocker(t), newLocker(t)
	key, kept := testKey(t, "k"), testKey(t, "kept")
	le := take(t, holder, key, time.Minute)
	keptLease := take(t, holder, kept, time.Minute)
	keeper, err := lock.KeepAlive(t.Context(), keptLease, time.Minute, lock.WithRefreshInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer keeper.Stop()
	refused(t, other, key, "before the restart") // gives other a pooled connection too

	testenv.Restart(t, testenv.Memcached)

	select {
	case <-keeper.Context().Done():
		if !keeper.Lost() || !errors.Is(context.Cause(keeper.Context()), lock.ErrNotHeld) {
			t.Errorf("keep-alive ended with %v, want a loss matching ErrNotHeld", context.Cause(keeper.Context()))
		}
	case <-time.After(5 * time.Second):
		t.Errorf("keep-alive did not notice within 5 s that the restart lost its lease")
	}
	if err := le.Refresh(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh after the restart: got %v, want ErrNotHeld", err)
	}
	if err := le.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release after the restart: got %v, want ErrNotHeld", err)
	}
	// other's pooled connection is dead: its first take may fail with EOF,
	// as any gomemcache write would (a write is not retried: it might have
	// been applied). lock.Acquire would return that error; retry by hand.
	var next lock.Lease
	for attempt := 0; next == nil; attempt++ {
		next, err = other.TryAcquire(t.Context(), key, time.Minute)
		if err != nil && (attempt > 3 || errors.Is(err, lock.ErrNotAcquired)) {
			t.Fatalf("TryAcquire after the restart: %v", err)
		}
	}
	if next.Token() <= le.Token() {
		t.Errorf("token after the restart %d, want greater than %d from before it", next.Token(), le.Token())
	}
	// The stale lease still cannot free the new holder.
	if err := le.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("stale Release after the restart: got %v, want ErrNotHeld", err)
	}
	refused(t, holder, key, "the holder after the restart")
	if err := next.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}
