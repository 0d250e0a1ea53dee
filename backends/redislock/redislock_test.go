package redislock_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// topology names a way of reaching Redis in these tests: the shared single
// node or Cluster, or a private one started for a fault test.
type topology struct {
	name    string
	cluster bool
	addrs   func(tb testing.TB) []string
}

var (
	single     = topology{"single", false, func(tb testing.TB) []string { return []string{testenv.RedisAddr(tb)} }}
	cluster    = topology{"cluster", true, testenv.RedisClusterAddrs}
	topologies = []topology{single, cluster}
)

// private starts a server of kind s (testenv.Redis or testenv.RedisCluster)
// for t alone, for fault tests that pause, flush or reshard it.
func private(t *testing.T, s testenv.Server) (topology, *testenv.Instance) {
	t.Helper()
	in := testenv.Private(t, s)
	return topology{"private " + string(s), s == testenv.RedisCluster, func(testing.TB) []string { return in.Addrs() }}, in
}

// newClient returns a client whose connections carry name (CLIENT SETNAME),
// so that fault tests can find and kill them.
func (tp topology) newClient(tb testing.TB, name string) redis.UniversalClient {
	tb.Helper()
	if tp.cluster {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: tp.addrs(tb), ClientName: name})
	}
	return redis.NewClient(&redis.Options{Addr: tp.addrs(tb)[0], ClientName: name})
}

// client returns a new client closed when tb ends.
func (tp topology) client(tb testing.TB, name string) redis.UniversalClient {
	tb.Helper()
	c := tp.newClient(tb, name)
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("closing the client: %v", err)
		}
	})
	return c
}

// locker returns a Locker on c, closed when tb ends (before c).
func locker(tb testing.TB, c redis.UniversalClient, opts ...redislock.Option) *redislock.Locker {
	tb.Helper()
	l, err := redislock.New(c, opts...)
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

// countHook counts the commands (and pipelines) a client sends: the round
// trips it makes.
type countHook struct{ n *atomic.Int64 }

func (h countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// newLocker returns an independent Locker with its own client, both
// closed when tb ends. If count is not nil, the client's commands are
// counted there.
func (tp topology) newLocker(tb testing.TB, count *atomic.Int64, opts ...redislock.Option) *redislock.Locker {
	tb.Helper()
	c := tp.client(tb, "")
	if count != nil {
		c.AddHook(countHook{count})
	}
	return locker(tb, c, opts...)
}

func (tp topology) config() conformance.Config {
	return conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return tp.newLocker(t, nil) },
		NewLockerTB:    func(tb testing.TB) lock.Locker { return tp.newLocker(tb, nil) },
		TTLGranularity: time.Millisecond,
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			return tp.newFaultyLocker(t)
		},
	}
}

func TestConformance(t *testing.T) { conformance.Run(t, single.config()) }

func TestConformanceCluster(t *testing.T) { conformance.Run(t, cluster.config()) }

func (tp topology) storeConfig() conformance.StoreConfig {
	return conformance.StoreConfig{
		NewStore:       func(t *testing.T) idempotency.Store { return tp.newLocker(t, nil) },
		TTLGranularity: time.Millisecond,
		NewFaultyStore: func(t *testing.T) (idempotency.Store, conformance.Faults) {
			return tp.newFaultyLocker(t)
		},
	}
}

func TestStoreConformance(t *testing.T) { conformance.RunStore(t, single.storeConfig()) }

func TestStoreConformanceCluster(t *testing.T) { conformance.RunStore(t, cluster.storeConfig()) }

func (tp topology) bench(b *testing.B) {
	var count atomic.Int64
	cfg := tp.config()
	cfg.NewLocker = nil
	cfg.NewLockerTB = func(tb testing.TB) lock.Locker { return tp.newLocker(tb, &count) }
	cfg.RoundTrips = count.Load
	conformance.Benchmark(b, cfg)
}

func BenchmarkConformance(b *testing.B) { single.bench(b) }

func BenchmarkConformanceCluster(b *testing.B) { cluster.bench(b) }

// testPrefix returns a key prefix no other test run uses, and deletes
// every key under it when tb ends.
func (tp topology) testPrefix(tb testing.TB) string {
	tb.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "idemlock-test:" + hex.EncodeToString(b[:]) + ":"
	admin := tp.client(tb, "")
	tb.Cleanup(func() {
		ctx := context.Background()
		del := func(ctx context.Context, c *redis.Client) error {
			keys, err := c.Keys(ctx, prefix+"*").Result()
			if err != nil || len(keys) == 0 {
				return err
			}
			for _, k := range keys {
				if err := c.Del(ctx, k).Err(); err != nil {
					return err
				}
			}
			return nil
		}
		var err error
		switch c := admin.(type) {
		case *redis.ClusterClient:
			err = c.ForEachMaster(ctx, del)
		case *redis.Client:
			err = del(ctx, c)
		}
		if err != nil {
			tb.Logf("deleting the test keys under %q: %v", prefix, err)
		}
	})
	return prefix
}

// uniqueName returns a client name no other test run uses.
func uniqueName(tb testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "idemlock-test-" + hex.EncodeToString(b[:])
}
