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
	"github.com/idemlock/lock/internal/leakcheck"
	"github.com/idemlock/lock/internal/testenv"
)

// subtest is one clause of a contract, run with parameters P.
type subtest[P any] struct {
	name   string // stable subtest name
	clause string // what the contract says, quoted in failures
	run    func(c *check, p P)
	cause  string // the mistake that most often breaks the clause
}

// suite lists the clauses in the order Run runs them. The order and names
// are part of the package's API: users select them with -run and -skip.
// New clauses are added at the end; NoGoroutineLeak and NoConnectionLeak
// always come last (see runSuite). The package doc lists them all.
var suite = []subtest[params]{
	{"InvalidInput", "bad input gets a typed error, never a panic", testInvalidInput,
		"the backend does not call lock.CheckArgs / lock.CheckRefresh first, or wraps their errors without %w"},
	{"TakeAndRelease", "a free key can be taken; release frees it", testTakeAndRelease,
		"Release does not delete the holding, or Deadline() is not the time the take was sent plus the TTL"},
	{"HeldKeyRefused", "a held key is refused with ErrNotAcquired", testHeldKeyRefused,
		"the take overwrites instead of create-if-absent, or the refusal does not wrap lock.ErrNotAcquired (use *lock.NotAcquiredError)"},
	{"OneWinner", "exactly one of many concurrent takers wins", testOneWinner,
		"the take reads and then writes in two requests; it must be one atomic create-if-absent on the server"},
	{"IndependentKeys", "different keys are different locks", testIndependentKeys,
		"keys are truncated or mapped to the same storage key"},
	{"StrangeKeys", "every valid key works and is its own lock", testStrangeKeys,
		"the key escaping is not one-to-one (two keys share a storage key), or keys the server cannot store are passed through unescaped"},
	{"ReleaseTwice", "release after release reports ErrNotHeld", testReleaseTwice,
		"Release deletes the key by name instead of comparing the lease's own value first"},
	{"RefreshAfterRelease", "refresh after release reports ErrNotHeld and takes nothing", testRefreshAfterRelease,
		"Refresh sets the TTL by key name or re-creates the key, instead of compare-and-expire on the lease's own value"},
	{"Expiry", "a lease is held until its TTL and freed after it", testExpiry,
		"the TTL is kept by a client-side timer instead of the server, or is sent in the wrong unit"},
	{"RefreshExtends", "refresh extends the lease to the new TTL from now", testRefreshExtends,
		"Refresh does not send the new TTL, or sends it in the wrong unit"},
	{"ExpiredLeaseNotHeld", "refresh and release after expiry report ErrNotHeld and change nothing", testExpiredLeaseNotHeld,
		"Refresh or Release trusts local state instead of the server, or Refresh re-creates an expired key"},
	{"StaleReleaseOwnerChecked", "a stale lease's release never frees a newer holder", testStaleRelease,
		"Release deletes by key name, or the owner value is not unique per lease"},
	{"StaleRefreshOwnerChecked", "a stale lease's refresh never extends a newer holder", testStaleRefresh,
		"Refresh sets the TTL by key name, or the owner value is not unique per lease"},
	{"TokensIncrease", "fencing tokens strictly increase across holders", testTokensIncrease,
		"the token is a timestamp, a random number or a per-client counter instead of one counter per key (or wider) on the server"},
	{"TokensIncreaseAcrossExpiry", "fencing tokens strictly increase across expiry", testTokensAcrossExpiry,
		"the token counter is stored with the lock and expires or is deleted with it"},
	{"ContextCancelled", "a cancelled context is honoured promptly", testContextCancelled,
		"the backend does not check the context before sending (lock.CheckArgs, lock.CheckContext)"},
	{"AcquireDeadline", "Acquire gives up at its context's deadline with ErrNotAcquired", testAcquireDeadline,
		"Subscription.Wait ignores its context"},
	{"AcquireWakesOnRelease", "a blocked Acquire wakes promptly when the holder releases", testAcquireWakesOnRelease,
		"Release publishes no event, or Subscription.Wait misses one published between Subscribe and Wait"},
	{"AcquireWaitsForExpiry", "a blocked Acquire takes the key once the holder's TTL ran out", testAcquireWaitsForExpiry,
		"NotAcquiredError.Remaining overstates the holder's remaining TTL"},
	{"NotifiedWaiting", "optional Notifier: subscribed waiters see every release, no missed wake-up", testNotifiedWaiting,
		"Subscribe returns before the server confirmed the subscription, so a release right after it is missed"},
	{"KeepAliveHolds", "KeepAlive renewals keep a lease past its TTL until released", testKeepAliveHolds,
		"Refresh does not extend the server's TTL, or Deadline() is later than the server's expiry"},
	{"MutualExclusion", "mutual exclusion holds under stress across independent Lockers", testMutualExclusion,
		"a take that is not atomic, or an owner check that is not atomic with the delete"},
	{"StaleCallsAtExpiry", "release and refresh racing their own expiry never remove or shorten the next holder's lock", testStaleCallsAtExpiry,
		"the owner check and the delete (or expire) are two requests, such as GET then DEL: do both in one atomic compare-and-delete (compare-and-expire) on the server"},
	{"StaleCallsNearNewerExpiry", "a stale lease's release and refresh near the end of the newer holder's TTL report ErrNotHeld and change nothing", testStaleCallsNearNewerExpiry,
		"Release or Refresh skips the owner check when the key is about to expire anyway; the owner check must always run"},
	{"RefreshLate", "a refresh late in the TTL moves the deadline: the key is still held after the old expiry", testRefreshLate,
		"Refresh returns nil without extending in some part of the TTL (for example after half of it)"},
	{"TTLRoundsUp", "a TTL that is not a whole number of steps is rounded up, never down", testTTLRoundsUp,
		"the TTL is converted to the server's unit by truncation (integer division); round up, and never send 0 (memcached reads 0 as never)"},
	{"TokensIncreaseLongRun", "fencing tokens strictly increase over thousands of takes of one key", testTokensLongRun,
		"the token is stored in a type that wraps, or the counter is reset or replaced after a number of takes"},
	{"TokenOrder", "fencing tokens follow the order in which leases held the key", testTokenOrder,
		"the token is issued before the take (a slow taker then gets a smaller token than a faster later holder); issue it while the take holds the key"},
	{"ConcurrentLeaseCalls", "lease methods are safe for concurrent use: concurrent Refresh and Release never misreport ownership", testConcurrentLeaseCalls,
		"calls on one lease race on a client-side version (memcached's CAS id, an etcd revision) and report a lost race as ErrNotHeld; serialise the lease's calls or retry the compare"},
	{"WokenWaiterGivesUp", "a woken waiter that gives up never strands the next waiter", testWokenWaiterGivesUp,
		"a release wakes one waiter only, and a woken waiter that leaves without taking the key does not pass the wake-up on"},
	{"CancelInFlight", "optional fault hook: cancellation while a request is in flight is honoured promptly", testCancelInFlight,
		"the client call does not get the caller's context (context.Background() below the API), or waits for a reply without watching ctx.Done()"},
	{"UnknownOutcome", "optional fault hook: after a lost reply the lease never reports holding a key another lease holds, and a retried Release answers consistently", testUnknownOutcome,
		"the lease keeps local state (held, a renewal fast path) that a failed call does not invalidate; after any error whose outcome is unknown the next call must ask the server"},
	{"QueueOrder", "optional Queuer: waiters are served in the order they began waiting", testQueueOrder,
		"the queue is not ordered by arrival (a set or a stack, a score that is not the arrival), or a ticket's take does not check that no waiter is ahead"},
	{"QueueHeadGivesUp", "optional Queuer: a woken head that gives up never strands the queue; the rest are served in order", testQueueHeadGivesUp,
		"Ticket.Close removes the waiter without waking the next one while the key is free"},
	{"QueueHeadTakeLost", "optional Queuer and fault hook: a head whose take had an unknown outcome never strands the queue; the rest are served in order", testQueueHeadTakeLost,
		"a ticket whose take may have been applied leaves (Close) without undoing it or waking the next waiter, which then waits out the previous holder's TTL; or a retry keeps the ticket's old place ahead of later waiters"},
	{"QueueTicketRetryAfterLostTake", "optional Queuer and fault hook: a ticket that retries a take whose reply was lost never strands the waiters queued behind it", testQueueTicketRetryAfterLostTake,
		"a ticket's retry after a take of unknown outcome (which may hold the key with a lease nobody has) keeps or retakes its place without undoing that take or waking the next waiter, which then waits out the previous holder's TTL"},
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
	baseline := leakcheck.Snapshot()
	sockets := openSockets()
	prefix := "idemlock-conformance/" + newRunID() + "/" + scope
	for _, st := range clauses {
		t.Run(st.name, func(t *testing.T) {
			c := &check{T: t, clause: st.clause, cause: st.cause, prefix: prefix + st.name + "/"}
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
		if err := leakcheck.Find(baseline); err != nil {
			t.Errorf("contract clause violated: no goroutine outlives its owner: %v\nlikely cause: Close does not stop the goroutines the Locker started (subscriptions, renewals), or NewLocker does not close the Locker with t.Cleanup", err)
		}
	})
	t.Run("NoConnectionLeak", func(t *testing.T) { checkSockets(t, sockets) })
}

// check is a *testing.T that prefixes failures with the clause and names
// keys so that runs never meet on a shared server.
type check struct {
	*testing.T
	clause string
	cause  string // the clause's likely cause, unless a check names another
	prefix string
}

// Fatalf fails the subtest, naming the clause and its likely cause.
func (c *check) Fatalf(format string, args ...any) {
	c.Helper()
	c.T.Fatal(c.message(c.cause, format, args...))
}

// Errorf marks the subtest failed, naming the clause and its likely cause.
func (c *check) Errorf(format string, args ...any) {
	c.Helper()
	c.T.Error(c.message(c.cause, format, args...))
}

// Causef fails the subtest like Fatalf, with a likely cause specific to
// this check instead of the clause's.
func (c *check) Causef(cause, format string, args ...any) {
	c.Helper()
	c.T.Fatal(c.message(cause, format, args...))
}

func (c *check) message(cause, format string, args ...any) string {
	msg := "contract clause violated: " + c.clause + ": " + fmt.Sprintf(format, args...)
	if cause != "" {
		msg += "\nlikely cause: " + cause
	}
	return msg
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
	late, err := testenv.ProbeBefore(c.ctx(), l, key, until)
	if err != nil {
		c.Fatalf("%s: %v", why, err)
	}
	if late > 0 {
		c.Logf("%s: inconclusive: the probe was answered %v after the TTL could have run out", why, late)
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

// awaitFree probes with l until key can be taken, and fails if a probe
// sent more than within from now still finds it held (see pollUntil). It
// returns the lease it took.
func (c *check) awaitFree(l lock.Locker, key string, ttl, within time.Duration, why string) lock.Lease {
	c.Helper()
	var le lock.Lease
	c.pollUntil(time.Now().Add(within), max(within/200, time.Millisecond), func() bool {
		got, err := l.TryAcquire(c.ctx(), key, ttl)
		if err != nil && !errors.Is(err, lock.ErrNotAcquired) {
			c.Fatalf("%s: TryAcquire(%q): %v", why, key, err)
		}
		le = got
		return err == nil
	}, "%s: key %q still held more than %v later", why, key, within)
	return le
}

// pollUntil calls probe, interval apart, until it reports done; probing the
// server, as expiry sends no event. A probe that finds it not done fails
// the clause (with the message format and args give) only if it was sent
// after deadline: the server then saw it after the bound. A probe sent
// before deadline whose answer comes back after it (the machine stalled)
// proves nothing either way, as in refusedBefore: the next probe, sent at
// once, decides. So a backend that never lets go still fails.
func (c *check) pollUntil(deadline time.Time, interval time.Duration, probe func() bool, format string, args ...any) {
	c.Helper()
	for {
		sent := time.Now()
		if probe() {
			return
		}
		if sent.After(deadline) {
			c.Fatalf(format, args...)
		}
		if time.Now().Before(deadline) {
			time.Sleep(interval)
		}
	}
}

func newRunID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
