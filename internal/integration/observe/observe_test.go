// Package observe_test runs the conformance suites on observed Lockers
// (lock.Observe) of a real backend that cannot notify (memcachedlock), so
// that the wrapper is shown to keep the backend's behaviour: Acquire must
// keep polling through it, and every clause must pass as on the bare
// backend.
package observe_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/idemlock/lock/observe"
)

// counter counts the events it is handed, so that a test can tell the
// wrapper reported what the suite did.
type counter struct{ takes, releases atomic.Int64 }

func (c *counter) Observe(_ context.Context, e observe.Event) {
	switch e.Kind {
	case observe.KindTryAcquire:
		c.takes.Add(1)
	case observe.KindRelease:
		c.releases.Add(1)
	}
}

func newMemcached(tb testing.TB, c *counter) lock.Locker {
	client := memcache.New(testenv.MemcachedAddr(tb))
	client.Timeout = 5 * time.Second
	client.MaxIdleConns = 16
	tb.Cleanup(func() { _ = client.Close() })
	l, err := memcachedlock.New(client)
	if err != nil {
		tb.Fatalf("memcachedlock.New: %v", err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	return lock.Observe(l, c)
}

func TestConformanceObservedMemcached(t *testing.T) {
	c := &counter{}
	if _, ok := newMemcached(t, c).(lock.Notifier); ok {
		t.Fatal("observed memcachedlock claims to be a lock.Notifier: Acquire would wait for notifications that never come")
	}
	conformance.Run(t, conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return newMemcached(t, c) },
		TTLGranularity: time.Second,
	})
	if c.takes.Load() == 0 || c.releases.Load() == 0 {
		t.Errorf("the suite ran on observed Lockers and %d takes, %d releases were reported", c.takes.Load(), c.releases.Load())
	}
}

func TestStoreConformanceObservedMemcached(t *testing.T) {
	c := &counter{}
	conformance.RunStore(t, conformance.StoreConfig{
		NewStore:       func(t *testing.T) idempotency.Store { return newMemcached(t, c).(idempotency.Store) },
		TTLGranularity: time.Second,
	})
}
