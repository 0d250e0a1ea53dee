package memcachedlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"sync"
	"sync/atomic"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/internal/testenv"
)

// A restart loses every lock and every token counter. Held leases must then
// say truthfully that they are not held, and takes must succeed (not fail
// with a connection error: the clients' pooled connections are all dead, and
// gets, add and incr are retried on a fresh one),
// keep-alive must notice, and the next tokens must still be greater. It runs
// on a private server, so the restart disturbs no other test.
func TestServerRestartMidHold(t *testing.T) {
	server := testenv.Private(t, testenv.Memcached)
	newLocker := func() *memcachedlock.Locker {
		l, err := memcachedlock.New(newClientAt(t, server.Addr(), new(atomic.Int64)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		return l
	}
	holder, other, keeperL := newLocker(), newLocker(), newLocker()
	key, kept := testKey(t, "k"), testKey(t, "kept")
	le := take(t, holder, key, time.Minute)
	keptLease := take(t, keeperL, kept, time.Minute)
	keeper, err := lock.KeepAlive(t.Context(), keptLease, time.Minute, lock.WithRefreshInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer keeper.Stop()
	// Leave several connections in holder's pool, all of which the restart
	// kills; le's Refresh below must get past every one of them.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := holder.TryAcquire(t.Context(), key, time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
				t.Errorf("TryAcquire of a held key: %v", err)
			}
		})
	}
	wg.Wait()
	refused(t, other, key, "before the restart") // gives other a pooled connection too

	server.Restart(t)

	if err := le.Refresh(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh after the restart: got %v, want ErrNotHeld", err)
	}
	select {
	case <-keeper.Context().Done():
		if !keeper.Lost() || !errors.Is(context.Cause(keeper.Context()), lock.ErrNotHeld) {
			t.Errorf("keep-alive ended with %v, want a loss matching ErrNotHeld", context.Cause(keeper.Context()))
		}
	case <-time.After(5 * time.Second):
		t.Errorf("keep-alive did not notice within 5 s that the restart lost its lease")
	}
	if err := le.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release after the restart: got %v, want ErrNotHeld", err)
	}
	// other's pooled connection is dead too: the take gets past it.
	next := take(t, other, key, time.Minute)
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
