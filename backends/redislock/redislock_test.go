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

// topology names a way of reaching Redis in these tests.
type topology struct {
	name      string
	newClient func(tb testing.TB) redis.UniversalClient
}

var (
	single = topology{"single", func(tb testing.TB) redis.UniversalClient {
		return redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(tb)})
	}}
	cluster = topology{"cluster", func(tb testing.TB) redis.UniversalClient {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: testenv.RedisClusterAddrs(tb)})
	}}
)

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
	c := tp.newClient(tb)
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("closing the client: %v", err)
		}
	})
	if count != nil {
		c.AddHook(countHook{count})
	}
	l := redislock.New(c, opts...)
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("closing the Locker: %v", err)
		}
	})
	return l
}

func (tp topology) config() conformance.Config {
	return conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return tp.newLocker(t, nil) },
		NewLockerTB:    func(tb testing.TB) lock.Locker { return tp.newLocker(tb, nil) },
		TTLGranularity: time.Millisecond,
	}
}

func TestConformance(t *testing.T) { conformance.Run(t, single.config()) }

func TestConformanceCluster(t *testing.T) { conformance.Run(t, cluster.config()) }

func (tp topology) storeConfig() conformance.StoreConfig {
	return conformance.StoreConfig{
		NewStore:       func(t *testing.T) idempotency.Store { return tp.newLocker(t, nil) },
		TTLGranularity: time.Millisecond,
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

// runPrefix returns a key prefix no other test run uses.
func runPrefix(tb testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "idemlock-test:" + hex.EncodeToString(b[:]) + ":"
}
