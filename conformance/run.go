package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/debug"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"go.uber.org/goleak"
)

// subtest is one clause of a contract, run with parameters P.
type subtest[P any] struct {
	name   string // stable subtest name
	clause string // what the contract says, quoted in failures
	run    func(c *check, p P)
}

// suite lists the clauses in the order Run runs them. The order and names
// are part of the package's API: users select them with -run and -skip.
var suite = []subtest[params]{
	{"InvalidInput", "bad input gets a typed error, never a panic", testInvalidInput},
	{"TakeAndRelease", "a free key can be taken; release frees it", testTakeAndRelease},
	{"HeldKeyRefused", "a held key is refused with ErrNotAcquired", testHeldKeyRefused},
	{"OneWinner", "exactly one of many concurrent takers wins", testOneWinner},
	{"IndependentKeys", "different keys are different locks", testIndependentKeys},
	{"StrangeKeys", "every valid key works and is its own lock", testStrangeKeys},
	{"ReleaseTwice", "release after release reports ErrNotHeld", testReleaseTwice},
	{"RefreshAfterRelease", "refresh after release reports ErrNotHeld and takes nothing", testRefreshAfterRelease},
	{"Expiry", "a lease is held until its TTL and freed after it", testExpiry},
	{"RefreshExtends", "refresh extends the lease to the new TTL from now", testRefreshExtends},
	{"ExpiredLeaseNotHeld", "refresh and release after expiry report ErrNotHeld and change nothing", testExpiredLeaseNotHeld},
	{"StaleReleaseOwnerChecked", "a stale lease's release never frees a newer holder", testStaleRelease},
	{"StaleRefreshOwnerChecked", "a stale lease's refresh never extends a newer holder", testStaleRefresh},
	{"TokensIncrease", "fencing tokens strictly increase across holders", testTokensIncrease},
	{"TokensIncreaseAcrossExpiry", "fencing tokens strictly increase across expiry", testTokensAcrossExpiry},
	{"ContextCancelled", "a cancelled context is honoured promptly", testContextCancelled},
	{"AcquireDeadline", "Acquire gives up at its context's deadline with ErrNotAcquired", testAcquireDeadline},
	{"AcquireWakesOnRelease", "a blocked Acquire wakes promptly when the holder releases", testAcquireWakesOnRelease},
	{"AcquireWaitsForExpiry", "a blocked Acquire takes the key once the holder's TTL ran out", testAcquireWaitsForExpiry},
	{"NotifiedWaiting", "optional Notifier: subscribed waiters see every release, no missed wake-up", testNotifiedWaiting},
	{"KeepAliveHolds", "KeepAlive renewals keep a lease past its TTL until released", testKeepAliveHolds},
	{"MutualExclusion", "mutual exclusion holds under stress across independent Lockers", testMutualExclusion},
}

// Run runs the whole suite against the backend cfg describes, then checks
// that no goroutine was left behind by it.
func Run(t *testing.T, cfg Config) {
	t.Helper()
	runSuite(t, "", suite, newParams(t, cfg))
}

// runSuite runs each clause as a subtest, with keys under a prefix unique to
// the run, then the goroutine-leak clause.
func runSuite[P any](t *testing.T, scope string, clauses []subtest[P], p P) {
	t.Helper()
	baseline := goleak.IgnoreCurrent()
	prefix := "idemlock-conformance/" + newRunID() + "/" + scope
	for _, st := range clauses {
		t.Run(st.name, func(t *testing.T) {
			c := &check{T: t, clause: st.clause, prefix: prefix + st.name + "/"}
			defer func() {
				if r := recover(); r != nil {
					c.Fatalf("panic: %v\n%s", r, debug.Stack())
				}
			}()
			st.run(c, p)
		})
	}
	t.Run("NoGoroutineLeak", func(t *testing.T) {
		// Every subtest's Lockers were closed by their Cleanups by now.
		if err := goleak.Find(baseline); err != nil {
			t.Errorf("contract clause violated: no goroutine outlives its owner: %v", err)
		}
	})
}

// check is a *testing.T that prefixes failures with the clause and names
// keys so that runs never meet on a shared server.
type check struct {
	*testing.T
	clause string
	prefix string
}

// Fatalf fails the subtest, naming the clause.
func (c *check) Fatalf(format string, args ...any) {
	c.Helper()
	c.T.Fatalf("contract clause violated: %s: %s", c.clause, fmt.Sprintf(format, args...))
}

// Errorf marks the subtest failed, naming the clause.
func (c *check) Errorf(format string, args ...any) {
	c.Helper()
	c.T.Errorf("contract clause violated: %s: %s", c.clause, fmt.Sprintf(format, args...))
}

// key returns a key unique to this run and subtest.
func (c *check) key(name string) string { return c.prefix + name }

// ctx returns a context that ends with the subtest.
func (c *check) ctx() context.Context { return c.T.Context() }

// take takes key on l, failing the clause if it cannot.
func (c *check) take(l lock.Locker, key string, ttl time.Duration) lock.Lease {
	c.Helper()
	le, err := l.TryAcquire(c.ctx(), key, ttl)
	if err != nil {
		c.Fatalf("TryAcquire(%q, %v) on a free key: %v", key, ttl, err)
	}
	if le == nil {
		c.Fatalf("TryAcquire(%q) returned a nil Lease and no error", key)
	}
	return le
}

// refused asserts that l cannot take key now.
func (c *check) refused(l lock.Locker, key string, why string) {
	c.Helper()
	le, err := l.TryAcquire(c.ctx(), key, time.Minute)
	if err == nil {
		_ = le.Release(context.WithoutCancel(c.ctx()))
		c.Fatalf("%s: TryAcquire(%q) succeeded while another lease should hold the key", why, key)
	}
	if !errors.Is(err, lock.ErrNotAcquired) {
		c.Fatalf("%s: TryAcquire(%q) on a held key: got %v, want an error matching ErrNotAcquired", why, key, err)
	}
}

// refusedBefore asserts that l cannot take key, if the probe's answer comes
// back before until: the server then saw the probe while the holder's TTL
// still ran. A later answer proves nothing either way (the machine stalled),
// so it is only logged.
func (c *check) refusedBefore(l lock.Locker, key string, until time.Time, why string) {
	c.Helper()
	le, err := l.TryAcquire(c.ctx(), key, time.Minute)
	answered := time.Now()
	if err == nil {
		_ = le.Release(context.WithoutCancel(c.ctx()))
		if answered.Before(until) {
			c.Fatalf("%s: TryAcquire(%q) succeeded %v before the holder's TTL could have run out", why, key, until.Sub(answered))
		}
		c.Logf("%s: inconclusive: the probe was answered %v after the TTL could have run out", why, answered.Sub(until))
		return
	}
	if !errors.Is(err, lock.ErrNotAcquired) {
		c.Fatalf("%s: TryAcquire(%q) on a held key: got %v, want an error matching ErrNotAcquired", why, key, err)
	}
}

// release releases le, failing the clause on error.
func (c *check) release(le lock.Lease) {
	c.Helper()
	if err := le.Release(c.ctx()); err != nil {
		c.Fatalf("Release of a held lease on %q: %v", le.Key(), err)
	}
}

// notHeld asserts that err matches ErrNotHeld.
func (c *check) notHeld(op string, err error) {
	c.Helper()
	if !errors.Is(err, lock.ErrNotHeld) {
		c.Fatalf("%s: got %v, want an error matching ErrNotHeld", op, err)
	}
}

// awaitFree probes with l until key can be taken, and fails if that takes
// longer than within. It returns the lease it took.
func (c *check) awaitFree(l lock.Locker, key string, ttl, within time.Duration, why string) lock.Lease {
	c.Helper()
	deadline := time.Now().Add(within)
	probe := max(within/200, time.Millisecond)
	for {
		le, err := l.TryAcquire(c.ctx(), key, ttl)
		if err == nil {
			return le
		}
		if !errors.Is(err, lock.ErrNotAcquired) {
			c.Fatalf("%s: TryAcquire(%q): %v", why, key, err)
		}
		if time.Now().After(deadline) {
			c.Fatalf("%s: key %q still held %v later", why, key, within)
		}
		time.Sleep(probe) // probing the server: expiry sends no event
	}
}

func newRunID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
