// Package bench measures idemlock against the lock libraries it replaces,
// on the same real servers (scripts/servers.sh), in the same run.
//
// Every library is wrapped in the same small interface, [Client], so that
// one implementation of each workload drives them all:
//
//   - TakeRelease: one goroutine, uncontended take + release pairs;
//   - Handoff: 8 contenders, each with its own client (as 8 processes would
//     have), on one key; the holder keeps the lock for [HoldTime]; the
//     latency from a holder's release to the next holder's take, and how
//     evenly the contenders got the lock;
//   - Throughput: 32 goroutines sharing one client over 1,000 keys, one
//     attempt each;
//   - RoundTrips: requests per uncontended take + release, counted at the
//     server.
//
// The benchmarks are in bench_test.go; cmd/report runs them in interleaved
// rounds and writes BENCHMARKS.md and the hand-off chart.
package bench

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// EnvRound (IDEMLOCK_BENCH_ROUND=N, set by cmd/report) names the round in
// the benchmarks' output and rotates the order in which libraries run, so
// that no library always runs first (or last) on a warming machine.
const EnvRound = "IDEMLOCK_BENCH_ROUND"

// TTL is the lease TTL every library is asked for: long enough that no lock
// expires during a run, so every hand-off is a release.
const TTL = 30 * time.Second

// WarmConns returns how many keys each client of a hand-off workload takes
// and releases at once before the run: pgxpool's default pool size,
// max(4, GOMAXPROCS) (the database clients here use its defaults), so that
// each pooled connection has prepared the statements.
func WarmConns() int { return max(4, runtime.GOMAXPROCS(0)) }

// HoldTime is how long a contender keeps the lock in the Handoff workload.
const HoldTime = time.Millisecond

// Held is one holding of a lock.
type Held interface {
	Release(ctx context.Context) error
}

// Client is one process's handle on a lock library: its own connections to
// the server. It is safe for concurrent use.
type Client interface {
	// Try makes one attempt and never waits; ok is false (and err nil) when
	// another holder has key.
	Try(ctx context.Context, key string) (h Held, ok bool, err error)
	// Lock waits until it holds key, or ctx ends.
	Lock(ctx context.Context, key string) (Held, error)
}

// Lib is one library (or one configuration of it) on one backend.
type Lib struct {
	// Name identifies the library in benchmark names: lib=<Name>.
	Name string
	// Label is a short name for the chart (Name when empty).
	Label string
	// Desc says what is measured, for BENCHMARKS.md.
	Desc string
	// HandoffOnly marks a retry-policy variant: its take + release and
	// throughput are those of the library's default configuration, so it
	// runs only in the Handoff workload.
	HandoffOnly bool
	// Scaling includes the library in the Scaling workloads (idemlock's
	// default configuration always is, on a backend that notifies).
	Scaling bool
	// PollPeriod is the fixed interval at which the library retries while
	// waiting, or 0 when it is woken by events or retries at random
	// intervals. The Handoff workload holds the lock at least this long,
	// so that the contenders' polling phases are independent.
	PollPeriod time.Duration
	// Setup prepares one benchmark (a shared table for in-process locks)
	// and returns a constructor of independent clients. Both register
	// their clean-up with tb.Cleanup.
	Setup func(tb testing.TB, env Env) func() Client
}

// Backend is one server kind and the libraries measured on it.
type Backend struct {
	Name string // redis, etcd, consul, memcached, postgres, memory
	Libs []Lib  // the first one is idemlock
	// Env returns where the server is, skipping (or failing, under
	// IDEMLOCK_REQUIRE_SERVERS=1) when it is not running.
	Env func(tb testing.TB) Env
	// Meter returns a meter of the server's request counters and the Env
	// that clients measured by it must use (Consul's goes through a
	// counting proxy); nil for a backend without a server.
	Meter func(tb testing.TB, env Env) (Env, Meter)
	// Load is a cheaper meter, cheap enough to run during the Handoff
	// workload without slowing it: server-side where the server's counters
	// are cheap to read (etcd, memcached), client-side otherwise (Redis:
	// a go-redis hook; Consul: a counting http.RoundTripper). Its Stop
	// may be called again after one Start, each call counting from that
	// Start (the Scaling workloads' quiescence reads it so). Nil for a
	// backend without a server.
	Load func(tb testing.TB, env Env) (Env, Meter)
	// Background is the period of the requests this backend's libraries
	// send by the clock while a key is hot, not per hand-off, whose count
	// a Scaling window must not miss (etcd: 1 s, the TTL slack after which
	// etcdlock's take renews its client's pooled lease; Consul: 250 ms,
	// consullock's renewals of the idle sessions it pools at the bench's
	// TTL); 0 when they send none. A Scaling window spans at least
	// WindowPeriods of it (see handoff).
	Background time.Duration
	// ServerTime, when set, returns a function that reads the total time
	// the server spent executing commands so far, in microseconds (Redis:
	// INFO commandstats, where a script's time includes its commands').
	ServerTime func(tb testing.TB, env Env) func(tb testing.TB) float64
}

// Meter counts the requests a server receives between Start and Stop.
type Meter interface {
	Start(tb testing.TB)
	// Stop returns the counts since Start: "req" is the number of client
	// requests; other names are breakdowns, some of them not requests
	// (Redis's "cmds" also counts the commands scripts ran).
	Stop(tb testing.TB) Counts
}

// Env says where the servers are.
type Env struct {
	RedisAddr     string
	EtcdEndpoints []string
	ConsulAddr    string
	MemcachedAddr string
	PostgresURL   string
	// RedisHook, when set, is added to every Redis client (to count
	// requests on the client side as well).
	RedisHook redis.Hook
	// ConsulWrap, when set, wraps the transport of every Consul client.
	ConsulWrap func(http.RoundTripper) http.RoundTripper
	// PostgresDial, when set, dials every PostgreSQL connection (to count
	// requests).
	PostgresDial func(ctx context.Context, network, addr string) (net.Conn, error)
	// HandoffTimeout bounds one Handoff or Scaling run; zero means
	// DefaultHandoffTimeout, and a negative one fails the run.
	HandoffTimeout time.Duration
}

// Counts are request counts by name; see [Meter].
type Counts map[string]float64

// Backends lists every backend, in report order.
func Backends() []Backend {
	return []Backend{redisBackend(), etcdBackend(), consulBackend(), memcachedBackend(), postgresBackend(), memoryBackend()}
}
