package memcachedlock_test

import (
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/faults"
	"github.com/idemlock/lock/internal/testenv"
)

// TestClusterTopology runs both suites on 3 memcached nodes, which the
// client shards keys over (gomemcache's server list), each node behind a
// proxy, with no faults: a lock and its fencing counter may live on
// different nodes.
func TestClusterTopology(t *testing.T) {
	tp := faults.Shared(t, testenv.MemcachedCluster)
	newLocker := func(tb testing.TB) *memcachedlock.Locker {
		tb.Helper()
		n := tp.Net(tb)
		c := memcache.New(n.Addrs(tp.Addrs())...)
		c.Timeout = 5 * time.Second // a loaded machine running -race
		c.MaxIdleConns = 16
		tb.Cleanup(func() { _ = c.Close() })
		l, err := memcachedlock.New(c)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = l.Close() })
		return l
	}
	t.Run("Conformance", func(t *testing.T) {
		conformance.Run(t, conformance.Config{
			NewLocker:      func(t *testing.T) lock.Locker { return newLocker(t) },
			TTLGranularity: time.Second,
		})
	})
	t.Run("Store", func(t *testing.T) {
		conformance.RunStore(t, conformance.StoreConfig{
			NewStore:       func(t *testing.T) idempotency.Store { return newLocker(t) },
			TTLGranularity: time.Second,
		})
	})
	if unused := tp.Unused(tp.Addrs()); len(unused) > 0 {
		t.Errorf("no connection went to nodes %v through their proxies", unused)
	}
}
