package redislock_test

import (
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/faults"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// TestClusterTopologies runs both suites on the Redis topologies with
// replicas, through go-redis's UniversalClient as a user would make it,
// every connection (to Sentinels, primaries and replicas alike) through a
// proxy, with no faults: a primary with 2 replicas watched by 3 Sentinels
// (a failover client), and a Redis Cluster of 3 primaries with a replica
// each (a cluster client).
func TestClusterTopologies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		server testenv.Server
	}{
		{"Sentinel", testenv.RedisSentinel},
		{"ClusterHA", testenv.RedisClusterHA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := faults.Shared(t, tc.server)
			newLocker := func(tb testing.TB) *redislock.Locker {
				tb.Helper()
				opts := &redis.UniversalOptions{Addrs: tp.Addrs(), Dialer: tp.Net(tb).DialContext}
				if tc.server == testenv.RedisSentinel {
					opts.MasterName = tp.SentinelMaster()
				}
				c := redis.NewUniversalClient(opts)
				tb.Cleanup(func() { _ = c.Close() })
				l, err := redislock.New(c)
				if err != nil {
					tb.Fatal(err)
				}
				tb.Cleanup(func() {
					if err := l.Close(); err != nil {
						tb.Errorf("closing the Locker: %v", err)
					}
				})
				return l
			}
			t.Run("Conformance", func(t *testing.T) {
				conformance.Run(t, conformance.Config{
					NewLocker:      func(t *testing.T) lock.Locker { return newLocker(t) },
					TTLGranularity: time.Millisecond,
				})
			})
			t.Run("Store", func(t *testing.T) {
				conformance.RunStore(t, conformance.StoreConfig{
					NewStore:       func(t *testing.T) idempotency.Store { return newLocker(t) },
					TTLGranularity: time.Millisecond,
				})
			})
			// Every connection went through a proxy: to a Sentinel and the
			// primary it names, or to the 3 primaries of the cluster.
			if want := map[testenv.Server]int{testenv.RedisSentinel: 2, testenv.RedisClusterHA: 3}[tc.server]; len(tp.Used()) < want {
				t.Errorf("connections went through proxies to %v, want at least %d servers", tp.Used(), want)
			}
		})
	}
}
