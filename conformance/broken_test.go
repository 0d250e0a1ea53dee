package conformance_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
)

// A suite that never fails proves nothing. These tests run the suite, in a
// child test process, against a small lock server with deliberate flaws and
// check that it fails each one, naming the clause that was broken. The
// flawless server passes the whole suite; each flawed one is run against
// the clause that must catch it (the whole suite per flaw would take
// minutes), and `go test -count=50 -run CatchesBroken` shows that each is
// caught every time, not by luck.

// flaws maps each deliberate defect to the clause (subtest name) that must
// report it. Each defect is one a first-time backend author writes.
var flaws = map[string]string{
	"nonatomic-take":       "OneWinner",
	"unchecked-release":    "StaleReleaseOwnerChecked",
	"no-expiry":            "Expiry",
	"tokens-backwards":     "TokensIncrease",
	"refresh-after-expiry": "ExpiredLeaseNotHeld",
	"unchecked-refresh":    "StaleRefreshOwnerChecked",
	"reused-tokens":        "TokensIncreaseAcrossExpiry",
	"ignores-cancel":       "ContextCancelled",
	// Issue 20: the bugs the first suite let through.
	"release-get-then-del":     "StaleCallsAtExpiry",
	"refresh-get-then-expire":  "StaleCallsAtExpiry",
	"unchecked-near-end":       "StaleCallsNearNewerExpiry",
	"refresh-early-only":       "RefreshLate",
	"ttl-rounds-down":          "TTLRoundsUp",
	"tokens-wrap":              "TokensIncreaseLongRun",
	"token-before-take":        "TokenOrder",
	"ignores-cancel-in-flight": "CancelInFlight",
	"leaks-connections":        "NoConnectionLeak",
	// Issue 13: unknown outcomes, concurrent lease calls, lost wake-ups.
	"unserialised-lease-calls":     "ConcurrentLeaseCalls",
	"refresh-after-lost-release":   "UnknownOutcome",
	"retried-release-inconsistent": "UnknownOutcome",
	"stranded-waiter":              "WokenWaiterGivesUp",
}

// lateAnswers is a server without a flaw on a machine that stalls: every
// second refusal of a key held for less than a second more comes back a
// second after the holding ended, which is past the whole expiry bound. A
// late answer proves nothing, so these clauses must pass it.
const lateAnswers = "late-answers"

var lateAnswerClauses = []string{"Expiry", "StaleRefreshOwnerChecked", "AcquireWaitsForExpiry"}

// slowSetup is a server without a flaw whose client's first take sets up
// what it takes with first (as a Consul session or an etcd lease), in a
// request that is not a lock operation and takes longer than the suite's
// mid-flight wait: a stalled first take returns with its context before it
// sent the stalled request. The suite must neither hang on the fault left
// armed nor fail the backend.
const slowSetup = "slow-setup"

// alsoRun names clauses a flaw's child runs besides its own: the leak
// check needs Lockers made by other clauses.
var alsoRun = map[string]string{
	"leaks-connections": "TakeAndRelease",
}

const flawEnv = "IDEMLOCK_CONFORMANCE_FLAW"

func TestSuiteCatchesBrokenBackends(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the suite once per flaw")
	}
	t.Run("none", func(t *testing.T) {
		// The same server without a flaw must pass the whole suite, or the
		// failures below would prove nothing about the flaws.
		t.Parallel()
		if out, err := runWithFlaw(t, "none", ""); err != nil {
			t.Fatalf("the suite failed the flawless server: %v\n%s", err, out)
		}
	})
	for flaw, clause := range flaws {
		t.Run(flaw, func(t *testing.T) {
			t.Parallel()
			run := clause
			if also := alsoRun[flaw]; also != "" {
				run = also + "|" + clause
			}
			out, err := runWithFlaw(t, flaw, "/^("+run+")$")
			if err == nil {
				t.Fatalf("the suite passed a backend with the flaw %q:\n%s", flaw, out)
			}
			for _, want := range []string{"--- FAIL: TestBrokenBackend/" + clause + " ", "contract clause violated: ", "likely cause: "} {
				if !strings.Contains(string(out), want) {
					t.Fatalf("the suite failed the %q backend, but its output lacks %q:\n%s", flaw, want, out)
				}
			}
		})
	}
}

// The suite judges time bounds by when the server could have seen a
// probe: a refusal that was sent before the expiry bound and answered
// after it is inconclusive. Regression test: a probe answered after the
// bound used to fail Expiry at once under heavy load.
// TestSuiteSurvivesSlowSetup: regression test for a 20-minute hang of
// consullock's CancelInFlight on a loaded machine (a stalled take waited
// for its session's create, the stall stayed armed and hit the next take).
func TestSuiteSurvivesSlowSetup(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the suite in a child process")
	}
	if out, err := runWithFlaw(t, slowSetup, "/^(CancelInFlight)$"); err != nil {
		t.Fatalf("the suite failed a correct server whose first take sets up slowly: %v\n%s", err, out)
	}
}

func TestSuiteToleratesLateAnswers(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the suite in a child process")
	}
	if out, err := runWithFlaw(t, lateAnswers, "/^("+strings.Join(lateAnswerClauses, "|")+")$"); err != nil {
		t.Fatalf("the suite failed a correct server whose answers come back late: %v\n%s", err, out)
	}
}

func runWithFlaw(t *testing.T, flaw, clauses string) ([]byte, error) {
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestBrokenBackend$"+clauses, "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), flawEnv+"="+flaw)
	return cmd.CombinedOutput()
}

// TestBrokenBackend is the child process of TestSuiteCatchesBrokenBackends:
// it runs the suite on the broken server named by the environment, and
// does nothing in a normal test run.
func TestBrokenBackend(t *testing.T) {
	flaw := os.Getenv(flawEnv)
	if flaw == "" {
		return
	}
	if _, ok := flaws[flaw]; !ok && flaw != "none" && flaw != lateAnswers && flaw != slowSetup {
		t.Fatalf("unknown flaw %q", flaw)
	}
	srv := newBrokenServer(t, flaw)
	gran := time.Millisecond
	if flaw == "ttl-rounds-down" {
		gran = srv.step // the flaw only shows where TTLs have coarse steps
	}
	conformance.Run(t, conformance.Config{
		NewLocker:       func(t *testing.T) lock.Locker { return srv.locker(srv.client(t)) },
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) { c := srv.client(t); return srv.locker(c), c },
		TTLGranularity:  gran,
	})
}

// brokenServer is a small in-memory lock server that is correct except for
// one deliberate flaw. Its clients (brokenClient) talk to it through
// "requests" that faults can lose or stall, as a network would, and each
// holds a real loopback connection, as a network client would.
type brokenServer struct {
	flaw string
	step time.Duration // the TTL step: TTLs are rounded up to it (down, with the flaw)
	ln   net.Listener  // clients dial it; connections wait in its backlog

	mu        sync.Mutex
	held      map[string]*brokenLease
	next      uint64            // the token counter
	perKey    map[string]uint64 // per-key counters (reused-tokens, tokens-wrap)
	version   map[string]uint64 // per-key change counter, as memcached's CAS id
	tombstone map[string]uint64 // token of the last release per key (retried-release-inconsistent)
	waiters   map[string][]*brokenSub
	refusals  map[string]int // per-key refusals (late-answers)
	// takeWaits: a broadcast when a key is released, a take starts
	// waiting or the server closes; per-key counts of the takes waiting
	// and of the clients refused twice.
	cond           *sync.Cond
	closed         bool
	blocked, twice map[string]int
}

// rtt is the simulated round trip between the requests of a flawed
// operation that takes two.
const rtt = 200 * time.Microsecond

func newBrokenServer(t *testing.T, flaw string) *brokenServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	step := time.Millisecond
	if flaw == "ttl-rounds-down" {
		step = 100 * time.Millisecond
	}
	s := &brokenServer{
		flaw: flaw, step: step, ln: ln,
		held: map[string]*brokenLease{}, perKey: map[string]uint64{}, version: map[string]uint64{},
		tombstone: map[string]uint64{}, waiters: map[string][]*brokenSub{}, refusals: map[string]int{},
		blocked: map[string]int{}, twice: map[string]int{},
	}
	s.cond = sync.NewCond(&s.mu)
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		s.closed = true
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	return s
}

// client returns a new client of the server, with its own connection,
// closed when t ends (except with the leaks-connections flaw).
func (s *brokenServer) client(t *testing.T) *brokenClient {
	conn, err := net.Dial("tcp", s.ln.Addr().String())
	if err != nil {
		t.Fatalf("dialling the broken server: %v", err)
	}
	c := &brokenClient{wire: newWire(t, s.flaw == "ignores-cancel-in-flight"), srv: s, conn: conn, refusals: map[string]int{}}
	t.Cleanup(func() {
		if s.flaw != "leaks-connections" {
			_ = conn.Close()
		}
	})
	return c
}

// grant returns the TTL the server grants for ttl: rounded up to whole
// steps, or down with the ttl-rounds-down flaw.
func (s *brokenServer) grant(ttl time.Duration) time.Duration {
	steps := ttl / s.step
	if ttl%s.step != 0 && s.flaw != "ttl-rounds-down" {
		steps++
	}
	return steps * s.step
}

// live reports whether le holds its key now. s.mu is held.
func (s *brokenServer) live(le *brokenLease) bool {
	return le != nil && s.held[le.key] == le && (s.flaw == "no-expiry" || time.Now().Before(le.deadline))
}

// holder returns the live holding of key, or nil. s.mu is held.
func (s *brokenServer) holder(key string) *brokenLease {
	if le := s.held[key]; s.live(le) {
		return le
	}
	return nil
}

// drop deletes key's holding and wakes its first waiter. s.mu is held.
func (s *brokenServer) drop(key string) {
	delete(s.held, key)
	s.version[key]++
	s.cond.Broadcast()
	if subs := s.waiters[key]; len(subs) > 0 {
		subs[0].notify()
	}
}

// wire carries the requests of one fake client, with the faults of its
// conformance.Faults (a testenv.FaultSwitch): a write's reply can be lost
// after the server applied it, and any request can stall until the test
// ends.
type wire struct {
	*testenv.FaultSwitch
	deaf bool // a stalled request ignores its context (a flaw)
}

func newWire(t *testing.T, deaf bool) *wire {
	return &wire{FaultSwitch: testenv.NewFaultSwitch(t), deaf: deaf}
}

// send sends one request: apply runs on the server, under mu.
func (w *wire) send(ctx context.Context, write bool, mu *sync.Mutex, apply func() error) error {
	fault := w.Take()
	if fault == testenv.LoseReply && !write {
		w.Rearm(fault) // a read passes: the reply of the write is lost
		fault = testenv.NoFault
	}
	if fault == testenv.Stall {
		if w.deaf {
			return w.Stall(context.Background()) // waits for the reply, whatever ctx says
		}
		return w.Stall(ctx)
	}
	mu.Lock()
	err := apply()
	mu.Unlock()
	if fault == testenv.LoseReply {
		return testenv.ErrLostReply
	}
	return err
}

// brokenClient is one client of a brokenServer: a lock.Locker, a
// lock.Notifier and the conformance.Faults of its requests.
type brokenClient struct {
	*wire
	srv   *brokenServer
	conn  net.Conn
	setUp atomic.Bool // its first take set up (slowSetup)
	// refusals counts the takes of each key the server refused this
	// client (takeWaits); guarded by srv.mu.
	refusals map[string]int
}

// request sends one request to the server.
func (c *brokenClient) request(ctx context.Context, write bool, apply func() error) error {
	return c.send(ctx, write, &c.srv.mu, apply)
}

// checkCtx is the context check every call starts with, skipped by the
// ignores-cancel flaw.
func (c *brokenClient) checkCtx(ctx context.Context) error {
	if c.srv.flaw == "ignores-cancel" && ctx != nil {
		return nil
	}
	return lock.CheckContext(ctx)
}

func (c *brokenClient) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if err := c.checkCtx(ctx); err != nil {
		return nil, err
	}
	if err := lock.ValidateKey(key); err != nil {
		return nil, err
	}
	if err := lock.ValidateTTL(ttl); err != nil {
		return nil, err
	}
	s := c.srv
	if s.flaw == slowSetup && c.setUp.CompareAndSwap(false, true) {
		select { // a setup request the fault switch does not see
		case <-time.After(time.Second):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var drawn uint64
	if s.flaw == "token-before-take" {
		if err := c.request(ctx, true, func() error { s.next++; drawn = s.next; return nil }); err != nil {
			return nil, err
		}
		time.Sleep(rtt)
	}
	if s.flaw == "nonatomic-take" {
		var free bool
		if err := c.request(ctx, false, func() error { free = s.holder(key) == nil; return nil }); err != nil {
			return nil, err
		}
		if !free {
			return nil, &lock.NotAcquiredError{Key: key}
		}
		time.Sleep(time.Millisecond) // check, then set: the window is the flaw
	}
	var le *brokenLease
	err := c.request(ctx, true, func() error {
		if s.flaw == takeWaits && s.holder(key) != nil && !s.waitTurn(c, key) && s.closed {
			return errClosed
		}
		if cur := s.holder(key); cur != nil && s.flaw != "nonatomic-take" {
			return &lock.NotAcquiredError{Key: key, Remaining: time.Until(cur.deadline)}
		}
		token := drawn
		switch s.flaw {
		case "token-before-take":
		case "tokens-backwards":
			s.next++
			token = 1 << 40 / s.next
		case "reused-tokens":
			// A per-key counter that is stored with the lock and so
			// forgets the key once the lock expired or was released.
			if s.held[key] == nil || !s.live(s.held[key]) {
				s.perKey[key] = 0
			}
			s.perKey[key]++
			token = s.perKey[key]
		case "tokens-wrap":
			s.perKey[key]++
			token = (s.perKey[key]-1)%1000 + 1 // a counter that wraps after 1,000 takes
		default:
			s.next++
			token = s.next
		}
		granted := s.grant(ttl)
		le = &brokenLease{c: c, key: key, token: token, ttl: granted, lastTTL: ttl, deadline: time.Now().Add(granted), refreshed: time.Now()}
		s.held[key] = le
		s.version[key]++
		delete(s.tombstone, key)
		return nil
	})
	var refused *lock.NotAcquiredError
	if s.flaw == lateAnswers && errors.As(err, &refused) && refused.Remaining < time.Second {
		s.mu.Lock()
		s.refusals[key]++
		late := s.refusals[key]%2 == 0
		s.mu.Unlock()
		if late {
			time.Sleep(refused.Remaining + time.Second) // the machine stalls
		}
	}
	if err != nil {
		return nil, err
	}
	return le, nil
}

// brokenLease is one holding on the server, and the client's lease.
type brokenLease struct {
	c     *brokenClient
	key   string
	token uint64
	// Guarded by c.srv.mu: the server's view of the holding.
	ttl, lastTTL time.Duration
	deadline     time.Time
	refreshed    time.Time // when it was taken or last extended
	// The client's view (refresh-after-lost-release): released once a
	// Release returned nil.
	released atomic.Bool
}

func (le *brokenLease) Key() string   { return le.key }
func (le *brokenLease) Token() uint64 { return le.token }

// nearEnd reports whether the holding of key has less than a quarter of
// its TTL left (unchecked-near-end). s.mu is held.
func (s *brokenServer) nearEnd(key string) *brokenLease {
	if cur := s.holder(key); cur != nil && time.Until(cur.deadline) < cur.ttl/4 {
		return cur
	}
	return nil
}

func (le *brokenLease) Refresh(ctx context.Context, ttl time.Duration) error {
	c, s := le.c, le.c.srv
	if err := c.checkCtx(ctx); err != nil {
		return err
	}
	if err := lock.ValidateTTL(ttl); err != nil {
		return err
	}
	switch s.flaw {
	case "refresh-after-lost-release":
		// A renewal fast path for an unchanged TTL that trusts the lease's
		// own state instead of the key: it renews "the session" only.
		if !le.released.Load() && ttl == le.lastTTL {
			return c.request(ctx, true, func() error {
				if !time.Now().Before(le.deadline) {
					return lock.ErrNotHeld
				}
				le.deadline = time.Now().Add(s.grant(ttl))
				return nil
			})
		}
	case "refresh-get-then-expire", "unserialised-lease-calls":
		return le.checkThenChange(ctx, func(cur *brokenLease) {
			cur.deadline = time.Now().Add(s.grant(ttl))
			s.version[le.key]++
		})
	}
	return c.request(ctx, true, func() error {
		le.lastTTL = ttl
		cur := s.held[le.key]
		switch {
		case s.flaw == "unchecked-refresh" && cur != nil:
			cur.deadline = time.Now().Add(s.grant(ttl)) // extends whoever holds the key
			return nil
		case s.flaw == "unchecked-near-end" && s.nearEnd(le.key) != nil:
			s.nearEnd(le.key).deadline = time.Now().Add(s.grant(ttl)) // about to expire anyway
			return nil
		case s.flaw == "refresh-after-expiry" && (cur == le || cur == nil || !s.live(cur)):
			le.deadline = time.Now().Add(s.grant(ttl)) // resurrects an expired lease
			s.held[le.key] = le
			return nil
		case !s.live(le):
			return lock.ErrNotHeld
		case s.flaw == "refresh-early-only" && time.Since(le.refreshed) > le.ttl/2:
			return nil // "too late to matter"
		}
		le.ttl = s.grant(ttl)
		le.deadline = time.Now().Add(le.ttl)
		le.refreshed = time.Now()
		s.version[le.key]++
		return nil
	})
}

// checkThenChange is a flawed Refresh or Release in two requests: a read
// that checks the lease holds its key, then a write that changes whoever
// holds the key by then (release-get-then-del, refresh-get-then-expire),
// or, with unserialised-lease-calls, a write conditional on the key's
// version that reports a lost race as a lost lease (memcached's gets and
// cas).
func (le *brokenLease) checkThenChange(ctx context.Context, change func(cur *brokenLease)) error {
	c, s := le.c, le.c.srv
	var version uint64
	if err := c.request(ctx, false, func() error {
		if !s.live(le) {
			return lock.ErrNotHeld
		}
		version = s.version[le.key]
		return nil
	}); err != nil {
		return err
	}
	time.Sleep(rtt)
	return c.request(ctx, true, func() error {
		cur := s.held[le.key]
		if s.flaw == "unserialised-lease-calls" {
			if s.version[le.key] != version {
				return lock.ErrNotHeld
			}
			cur = le
		}
		if cur != nil {
			change(cur)
		}
		return nil
	})
}

func (le *brokenLease) Release(ctx context.Context) error {
	c, s := le.c, le.c.srv
	if err := c.checkCtx(ctx); err != nil {
		return err
	}
	if s.flaw == "release-get-then-del" || s.flaw == "unserialised-lease-calls" {
		err := le.checkThenChange(ctx, func(*brokenLease) { s.drop(le.key) })
		if err == nil {
			le.released.Store(true)
		}
		return err
	}
	err := c.request(ctx, true, func() error {
		cur := s.held[le.key]
		switch {
		case s.flaw == "unchecked-release" && cur != nil:
			s.drop(le.key) // deletes whoever holds the key
			return nil
		case s.flaw == "unchecked-near-end" && s.nearEnd(le.key) != nil:
			s.drop(le.key) // about to expire anyway
			return nil
		case s.flaw == "retried-release-inconsistent" && !s.live(le) && s.tombstone[le.key] == le.token:
			return nil // "already released by me": until a take overwrites the evidence
		case !s.live(le):
			return lock.ErrNotHeld
		}
		s.drop(le.key)
		s.tombstone[le.key] = le.token
		return nil
	})
	if err == nil {
		le.released.Store(true)
	}
	return err
}

// brokenSub is a subscription to releases of one key: the first waiter is
// woken by a release, and passes the wake-up on when it leaves while the
// key is free (except with the stranded-waiter flaw).
type brokenSub struct {
	srv    *brokenServer
	key    string
	ch     chan struct{}
	closed bool // guarded by srv.mu
}

func (c *brokenClient) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	if err := lock.CheckContext(ctx); err != nil {
		return nil, err
	}
	s := c.srv
	sub := &brokenSub{srv: s, key: key, ch: make(chan struct{}, 1)}
	s.mu.Lock()
	s.waiters[key] = append(s.waiters[key], sub)
	s.mu.Unlock()
	return sub, nil
}

func (b *brokenSub) notify() {
	select {
	case b.ch <- struct{}{}:
	default:
	}
}

func (b *brokenSub) Wait(ctx context.Context, _ *lock.NotAcquiredError) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	select {
	case <-b.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *brokenSub) Close() error {
	s := b.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	s.waiters[b.key] = slices.DeleteFunc(s.waiters[b.key], func(w *brokenSub) bool { return w == b })
	if subs := s.waiters[b.key]; len(subs) > 0 && s.holder(b.key) == nil && s.flaw != "stranded-waiter" && s.flaw != "queue-strands" {
		subs[0].notify() // this waiter may have been woken and left: pass it on
	}
	if len(s.waiters[b.key]) == 0 {
		delete(s.waiters, b.key)
	}
	return nil
}
