package etcdlock_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Timings of the etcd backend for the suites: etcd counts whole seconds,
// grants at least 2 s (1.5 election timeouts of the default 1 s), and
// deletes an expired lease's keys up to the TTL slack (a pooled lease may
// live that much longer than asked) plus half a second (its expiry check
// runs twice a second) after the TTL.
const (
	granularity = time.Second
	minTTL      = 2 * time.Second
	expirySlack = etcdlock.DefaultTTLSlack + time.Second
)

// counter counts requests to etcd: unary calls, and messages sent on
// streams (a lease renewal, a watch creation), in all and by method.
type counter struct {
	n       atomic.Int64
	methods sync.Map // full gRPC method name → *atomic.Int64
}

func (c *counter) load() int64 { return c.n.Load() }

func (c *counter) add(method string) {
	c.n.Add(1)
	v, _ := c.methods.LoadOrStore(method, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// method returns how many requests went to the named method, for example
// "Txn" or "LeaseGrant".
func (c *counter) method(name string) int64 {
	var n int64
	c.methods.Range(func(k, v any) bool {
		if strings.HasSuffix(k.(string), "/"+name) {
			n += v.(*atomic.Int64).Load()
		}
		return true
	})
	return n
}

func (c *counter) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			c.add(method)
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				return nil, err
			}
			return countingStream{s, c, method}, nil
		}),
	}
}

type countingStream struct {
	grpc.ClientStream
	c      *counter
	method string
}

func (s countingStream) SendMsg(m any) error {
	s.c.add(s.method)
	return s.ClientStream.SendMsg(m)
}

// newClient returns a client of the test etcd, closed when tb ends, whose
// requests c counts (c may be nil).
func newClient(tb testing.TB, c *counter) *clientv3.Client {
	tb.Helper()
	cfg := clientv3.Config{
		Endpoints:   testenv.EtcdEndpoints(tb),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if c != nil {
		cfg.DialOptions = c.dialOptions()
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		tb.Fatalf("clientv3.New: %v", err)
	}
	tb.Cleanup(func() { _ = cli.Close() })
	return cli
}

// mustNew is etcdlock.New for options that are valid.
func mustNew(tb testing.TB, cli *clientv3.Client, opts ...etcdlock.Option) *etcdlock.Locker {
	tb.Helper()
	l, err := etcdlock.New(cli, opts...)
	if err != nil {
		tb.Fatalf("etcdlock.New: %v", err)
	}
	return l
}

// newLocker returns a Locker on its own client, both closed when tb ends
// (the Locker first).
func newLocker(tb testing.TB, c *counter, opts ...etcdlock.Option) *etcdlock.Locker {
	tb.Helper()
	l := mustNew(tb, newClient(tb, c), opts...)
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("Locker.Close: %v", err)
		}
	})
	return l
}

// testPrefix returns a key prefix unique to this run and test, so tests
// never meet on the shared server.
func testPrefix(tb testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "idemlock-test/" + hex.EncodeToString(b[:]) + "/" + tb.Name() + "/"
}

func TestConformance(t *testing.T) {
	conformance.Run(t, conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return newLocker(t, nil) },
		TTLGranularity: granularity,
		MinTTL:         minTTL,
		ExpirySlack:    expirySlack,
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			return newFaultyLocker(t)
		},
	})
}

func TestStoreConformance(t *testing.T) {
	conformance.RunStore(t, conformance.StoreConfig{
		NewStore:       func(t *testing.T) idempotency.Store { return newLocker(t, nil) },
		TTLGranularity: granularity,
		MinTTL:         minTTL,
		ExpirySlack:    expirySlack,
		NewFaultyStore: func(t *testing.T) (idempotency.Store, conformance.Faults) {
			return newFaultyLocker(t)
		},
	})
}

// benchCounter counts the requests of every Locker BenchmarkConformance
// makes.
var benchCounter counter

func BenchmarkConformance(b *testing.B) {
	conformance.Benchmark(b, conformance.Config{
		NewLockerTB:    func(tb testing.TB) lock.Locker { return newLocker(tb, &benchCounter) },
		TTLGranularity: granularity,
		MinTTL:         minTTL,
		ExpirySlack:    expirySlack,
		RoundTrips:     benchCounter.load,
	})
}

// BenchmarkTakeReleasePoolOff is TakeRelease without the lease pool: each
// take grants its lease in line and each release revokes it behind, the
// cost the pool saves.
func BenchmarkTakeReleasePoolOff(b *testing.B) {
	var c counter
	l := newLocker(b, &c, etcdlock.WithPrefix(testPrefix(b)), etcdlock.WithLeasePool(0))
	ctx := context.Background()
	b.ReportAllocs()
	before := c.load()
	for b.Loop() {
		le, err := l.TryAcquire(ctx, "k", 30*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if err := le.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
	etcdlock.Quiesce(l)
	b.ReportMetric(float64(c.load()-before)/float64(b.N), "roundtrips/op")
}
