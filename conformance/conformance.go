package conformance

import (
	"testing"
	"time"

	"github.com/idemlock/lock"
)

// Config describes the backend under test. Zero values mean "default".
type Config struct {
	// NewLocker returns an independent Locker, as another process would have:
	// its own client and connections to the same server. It registers the
	// Locker's clean-up (closing the client) with t.Cleanup.
	NewLocker func(t *testing.T) lock.Locker
	// TTLGranularity is the smallest TTL step the backend honours
	// (time.Millisecond for Redis, time.Second for memcached); the suite
	// scales its timings by it. Default: a millisecond.
	TTLGranularity time.Duration

	// NewLockerTB is NewLocker for any testing.TB. [Benchmark] needs it
	// (a *testing.B is not a *testing.T); [Run] uses it when NewLocker is nil.
	NewLockerTB func(tb testing.TB) lock.Locker
	// MinTTL is the shortest TTL the server honours as asked: etcd grants at
	// least about 2 s, a Consul agent at least its session_ttl_min. Default:
	// TTLGranularity.
	MinTTL time.Duration
	// ExpirySlack is how long after a lease's TTL the server may still hold
	// the key (Consul invalidates sessions up to 2×TTL late; memcached counts
	// whole seconds). Default: two TTLGranularity steps.
	ExpirySlack time.Duration
	// RoundTrips, when set, returns how many requests the Lockers made to the
	// server so far; [Benchmark] then reports round trips per operation.
	RoundTrips func() int64
	// NewFaultyLocker, when set, returns an independent Locker as NewLocker
	// does, together with the fault switch of its client. The clauses about
	// unknown outcomes (a reply lost after the server applied the request)
	// and about cancellation while a request is in flight use it; without it
	// they are skipped as an optional capability. Every built-in networked
	// backend's test supplies it.
	NewFaultyLocker func(t *testing.T) (lock.Locker, Faults)
}

// Faults switches faults on in the client of one Locker (or Store) made
// by [Config.NewFaultyLocker] (or [StoreConfig.NewFaultyStore]), so that the
// suite can drive the outcomes a network has besides "done" and "not done".
//
// Each method arms one fault, for the next lock operation's request that the
// client sends (the request of a TryAcquire, Refresh, Release, Claim or
// Complete), never for background traffic such as session or lease
// renewals, subscriptions, or the backend undoing an earlier call whose
// outcome was unknown. Arming twice before the fault fires arms it once. The
// suite arms a fault only while no other call on that Locker is in flight,
// and never arms both at once. A backend's test implements it at the layer
// below the backend: a go-redis hook, a gRPC interceptor or dialer, an
// http.RoundTripper, a net.Conn wrapper.
type Faults interface {
	// LoseNextReply makes the next request that changes state on the server
	// reach the server and be applied there, and its reply be lost: the call
	// returns an error that matches neither lock.ErrNotHeld nor
	// lock.ErrNotAcquired, as when a connection drops after the request was
	// sent. A read that only precedes the change (memcached's gets before
	// its cas) passes untouched; the fault fires on the write. The outcome
	// is unknown to the backend; what the lease reports afterwards is what
	// the suite checks.
	LoseNextReply()
	// StallNextRequest makes the next request get no answer for as long as
	// the test runs, as from a server that hangs; whether the server applies
	// it is unknown. The transport behaves as a real one would: it honours
	// the request's context, or the deadlines the client sets on its
	// connection. The suite ends the caller's context and requires the call
	// to return promptly with an error that matches the context's error.
	// Stalls end when the test that made the Locker ends.
	StallNextRequest()
}

// FaultDisarmer is an optional interface of a [Faults]. Disarm drops the
// fault LoseNextReply or StallNextRequest armed if no request took it yet,
// and reports whether there was one. The suite calls it after a call whose
// request it stalled returned with its context: a take that spent that
// time on another request first (creating the session or lease it takes
// with) never sent the stalled one, and the fault would otherwise hit the
// suite's next request, whose context never ends, and hang the test. The
// suite then stalls the take again (its Locker is warm by then).
type FaultDisarmer interface {
	Disarm() bool
}

// SchedulingSlack is added to every upper bound on time the suite checks,
// for goroutine scheduling on a loaded machine under the race detector.
const SchedulingSlack = 250 * time.Millisecond

// params are the derived timings of one run.
type params struct {
	Config
	gran  time.Duration
	short time.Duration // a TTL short enough to wait out
	slack time.Duration // ExpirySlack
	long  time.Duration // a TTL that never runs out during a subtest
	quick bool          // -short: smaller time budgets for the statistical clauses
}

func newParams(tb testing.TB, cfg Config) params {
	tb.Helper()
	if cfg.NewLocker == nil && cfg.NewLockerTB == nil {
		tb.Fatal("conformance: Config.NewLocker is nil")
	}
	p := params{Config: cfg, gran: cfg.TTLGranularity}
	if p.gran <= 0 {
		p.gran = time.Millisecond
	}
	minTTL := max(cfg.MinTTL, p.gran)
	p.short = roundUp(max(minTTL, 250*time.Millisecond), p.gran)
	p.slack = cfg.ExpirySlack
	if p.slack <= 0 {
		p.slack = 2 * p.gran
	}
	p.long = roundUp(max(30*time.Second, 10*(p.short+p.slack)), p.gran)
	p.quick = testing.Short()
	return p
}

// budget is the time a statistical clause may spend: full by default, a
// quarter of it with -short.
func (p params) budget(full time.Duration) time.Duration {
	if p.quick {
		return full / 4
	}
	return full
}

// rounds is a statistical clause's target number of rounds: full by default,
// a quarter of it with -short, never fewer than least.
func (p params) rounds(full, least int) int {
	if p.quick {
		return max(full/4, least)
	}
	return full
}

func roundUp(d, step time.Duration) time.Duration {
	if r := d % step; r != 0 {
		d += step - r
	}
	return d
}

// newLocker returns a fresh independent Locker for tb.
func (p params) newLocker(tb testing.TB) lock.Locker {
	tb.Helper()
	var l lock.Locker
	if c, ok := tb.(*check); ok {
		tb = c.T
	}
	if t, ok := tb.(*testing.T); ok && p.NewLocker != nil {
		l = p.NewLocker(t)
	} else if p.NewLockerTB != nil {
		l = p.NewLockerTB(tb)
	} else {
		tb.Fatal("conformance: Config.NewLockerTB is needed here (Benchmark cannot call NewLocker with a *testing.B)")
	}
	if l == nil {
		tb.Fatal("conformance: NewLocker returned nil")
	}
	return l
}

// keepAliveTTL is the TTL of the clauses that test renewal. At least a
// second and two TTL steps leave renewals room on a loaded machine:
// memcached, counting whole seconds on a clock that lags when the server is
// starved of CPU, may end a one-second item after just over a second.
func (p params) keepAliveTTL() time.Duration {
	return roundUp(max(p.short, time.Second, 2*p.gran), p.gran)
}

// expiryBound is how long after a take with ttl the key must be free.
func (p params) expiryBound(ttl time.Duration) time.Duration {
	return ttl + p.slack + p.gran + SchedulingSlack
}
