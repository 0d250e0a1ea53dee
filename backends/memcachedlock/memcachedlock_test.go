package memcachedlock_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/testenv"
)

// A *Locker is an idempotency.Store and a lock.Backend: this fails to
// compile otherwise.
var (
	_ idempotency.Store = (*memcachedlock.Locker)(nil)
	_ lock.Backend      = (*memcachedlock.Locker)(nil)
)

// requests counts the requests every test client sent: gomemcache flushes
// each command in one Write, and the values these tests store are small.
var requests atomic.Int64

// countingConn counts the writes on one connection.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(b)
}

// newClient returns a client of its own for the test server, closed at the
// end of tb, whose requests add to n (and to requests).
func newClient(tb testing.TB, n *atomic.Int64) *memcache.Client {
	tb.Helper()
	return newClientAt(tb, testenv.MemcachedAddr(tb), n)
}

// newClientAt is newClient for the server at addr.
func newClientAt(tb testing.TB, addr string, n *atomic.Int64) *memcache.Client {
	tb.Helper()
	return newClientWith(tb, addr, func(conn net.Conn) net.Conn { return countingConn{Conn: conn, n: n} })
}

// newClientWith returns a client of its own for the server at addr, closed
// at the end of tb, whose connections are wrapped by wrap.
func newClientWith(tb testing.TB, addr string, wrap func(net.Conn) net.Conn) *memcache.Client {
	tb.Helper()
	c := memcache.New(addr)
	c.Timeout = 5 * time.Second // a loaded machine running -race
	c.MaxIdleConns = 16
	var d net.Dialer
	c.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return wrap(conn), nil
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// newLocker returns an independent Locker with a client of its own, both
// closed at the end of tb.
func newLocker(tb testing.TB, opts ...memcachedlock.Option) *memcachedlock.Locker {
	tb.Helper()
	l, err := memcachedlock.New(newClient(tb, &requests), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	return l
}

// conformanceConfig is the configuration of both suites: memcached counts
// whole seconds.
func conformanceConfig() conformance.Config {
	return conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return newLocker(t) },
		NewLockerTB:    func(tb testing.TB) lock.Locker { return newLocker(tb) },
		TTLGranularity: time.Second,
		RoundTrips:     requests.Load,
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			return newFaultyLocker(t)
		},
	}
}

func TestConformance(t *testing.T) {
	conformance.Run(t, conformanceConfig())
}

func TestStoreConformance(t *testing.T) {
	conformance.RunStore(t, conformance.StoreConfig{
		NewStore:       func(t *testing.T) idempotency.Store { return newLocker(t) },
		TTLGranularity: time.Second,
		NewFaultyStore: func(t *testing.T) (idempotency.Store, conformance.Faults) {
			return newFaultyLocker(t)
		},
	})
}

func BenchmarkConformance(b *testing.B) {
	conformance.Benchmark(b, conformanceConfig())
}

// BenchmarkRawRequest is one bare gomemcache request (a get that misses),
// the unit the Locker's figures are multiples of on this machine.
func BenchmarkRawRequest(b *testing.B) {
	c := newClient(b, new(atomic.Int64))
	key := "memcachedlock-bench-missing"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Get(key); err != memcache.ErrCacheMiss {
			b.Fatal(err)
		}
	}
}
