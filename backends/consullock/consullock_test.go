package consullock_test

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/consullock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/leakcheck"
	"github.com/idemlock/lock/internal/testenv"
)

// noLeaks checks, after every other clean-up of the test, that the test
// left no goroutine behind.
func noLeaks(t *testing.T) {
	t.Helper()
	leakcheck.Check(t)
}

func take(t *testing.T, l lock.Locker, k string, ttl time.Duration) lock.Lease {
	t.Helper()
	le, err := l.TryAcquire(t.Context(), k, ttl)
	if err != nil {
		t.Fatalf("TryAcquire(%q, %v): %v", k, ttl, err)
	}
	return le
}

func release(t *testing.T, le lock.Lease) {
	t.Helper()
	if err := le.Release(t.Context()); err != nil {
		t.Fatalf("Release(%q): %v", le.Key(), err)
	}
}

// waitFor polls cond every few milliseconds until it holds or within
// passes. It is for state on the agent that sends no event to the test.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRoundTrips checks the goal: a warm take + release is two requests,
// both transactions, with no session created on the way while the pool
// had a fresh one to give. The pool hands out only a session renewed
// within consullock.MaxAge, and the renewals come from its keeper
// goroutine: on a starved machine the keeper can be late and a take then
// rightly creates a session. judgeCreates tells the two apart from what
// the client sent and when.
func TestRoundTrips(t *testing.T) {
	checkNoSessions(t)
	var seen *sessionLog
	l, c := newLockerWith(t, testenv.ConsulAddr(t), func(base http.RoundTripper) http.RoundTripper {
		seen = newSessionLog(base)
		return seen
	})
	k := key(t, "k")
	ttl := 30 * time.Second
	release(t, take(t, l, k, ttl)) // cold: creates the first session
	// The keeper adds a spare in the background; let it finish.
	waitFor(t, 5*time.Second, "the keeper creating a spare session", func() bool { return c.snapshot()["session/create"] >= 2 })

	// takes are the spans of the warm takes, from just before each began
	// to just after it returned.
	var takes []span
	warmTake := func() lock.Lease {
		sp := span{start: time.Now()}
		le := take(t, l, k, ttl)
		sp.end = time.Now()
		takes = append(takes, sp)
		return le
	}
	before := c.snapshot()
	le := warmTake()
	afterTake := c.snapshot()
	release(t, le)
	after := c.snapshot()
	if d := diff(before, afterTake); d["txn"] != 1 || d["kv"] != 0 {
		t.Errorf("a warm take made requests %v, want exactly one txn", d)
	}
	if d := diff(afterTake, after); d["txn"] != 1 || d["session/create"] != 0 || d["session/destroy"] != 0 {
		t.Errorf("a release made requests %v, want exactly one txn", d)
	}

	const n = 200
	before = c.snapshot()
	start := time.Now()
	for range n {
		release(t, warmTake())
	}
	took := time.Since(start)
	d := diff(before, c.snapshot())
	if d["txn"] != 2*n || d["kv"] != 0 {
		t.Errorf("%d warm take+release pairs made requests %v, want %d txn", n, d, 2*n)
	}
	total := 0
	for _, v := range d {
		total += v
	}
	t.Logf("%d warm take+release pairs: %.3f requests per pair (%v; background renewals included), %v per pair", n, float64(total)/n, d, took/n)

	late := judgeCreates(t, seen, takes, consullock.MaxAge(ttl))
	if late == len(takes) {
		t.Errorf("all %d warm takes created a session: none reused one", late)
	}
}

// span is when a take began and when it returned.
type span struct{ start, end time.Time }

// judgeCreates judges each session create that seen saw sent during one of
// takes (sorted, not overlapping, no lease held at the start of each):
// it is an error if the pool had a session to give instead, and otherwise
// inconclusive (logged). It returns how many takes saw a create sent.
//
// An idle session was surely fresh at the take when, for a session other
// than the one created: a successful create or renewal of it was answered
// before the take began (no lease was held then, so it was idle), that
// create or renewal was sent less than maxAge - conformance.SchedulingSlack
// before the create (the margin is for the pool stamping a renewal a
// little before the client sends it), and no destroy of it was sent before
// the create or within that margin after it (the keeper takes a session
// out of the pool a little before destroying it). A renewal answered only
// after the take began may have come too late for it: the keeper renews
// stale sessions when a take finds none fresh. The pool surely had a
// session to give instead of creating one when two idle sessions were
// surely fresh: with only one, the take may have taken it and the create
// be the keeper's, replacing the spare it left the pool without.
func judgeCreates(t *testing.T, seen *sessionLog, takes []span, maxAge time.Duration) (late int) {
	t.Helper()
	fresh := maxAge - conformance.SchedulingSlack
	if fresh <= 0 {
		t.Fatalf("maxAge %v leaves no margin for scheduling (%v)", maxAge, conformance.SchedulingSlack)
	}
	seen.mu.Lock()
	defer seen.mu.Unlock()
	sent := map[int]bool{} // takes that sent a create
	for _, cr := range seen.creates {
		i := sort.Search(len(takes), func(i int) bool { return !takes[i].end.Before(cr.sent) })
		if i == len(takes) || cr.sent.Before(takes[i].start) {
			continue // not sent during a warm take: the cold start's or the keeper's spare
		}
		sent[i] = true
		began := takes[i].start
		// The age at the create of each idle session's youngest stamp.
		var idle []renewal
		for id, h := range seen.byID {
			if id == cr.id || !h.destroyed.IsZero() && !h.destroyed.After(cr.sent.Add(conformance.SchedulingSlack)) {
				continue
			}
			youngest := time.Duration(-1)
			for _, st := range h.stamps {
				if st.answered.IsZero() || st.answered.After(began) {
					continue
				}
				if age := cr.sent.Sub(st.sent); youngest < 0 || age < youngest {
					youngest = age
				}
			}
			if youngest >= 0 {
				idle = append(idle, renewal{id, youngest})
			}
		}
		sort.Slice(idle, func(a, b int) bool { return idle[a].age < idle[b].age })
		if len(idle) >= 2 && idle[1].age <= fresh {
			t.Errorf("a session create was sent %v after warm take %d began, while sessions %s and %s were idle and renewed %v and %v before the create (answered before the take began; maxAge %v)", cr.sent.Sub(began), i, idle[0].id, idle[1].id, idle[0].age, idle[1].age, maxAge)
			continue
		}
		var ages []time.Duration
		for _, r := range idle[:min(2, len(idle))] {
			ages = append(ages, r.age)
		}
		t.Logf("a session create was sent %v after warm take %d began, with fewer than two idle sessions surely fresh (the youngest renewals answered before the take began were %v before the create; maxAge %v): the keeper was late, or replaced the spare the take took; inconclusive", cr.sent.Sub(began), i, ages, maxAge)
	}
	return len(sent)
}

// renewal is how long before a create an idle session was last renewed.
type renewal struct {
	id  string
	age time.Duration
}

func TestTTLBounds(t *testing.T) {
	checkNoSessions(t)
	client, c := newClient(t)
	ctx := t.Context()
	k := key(t, "k")

	// A Locker told nothing about the agent assumes Consul's default 10s
	// minimum and refuses shorter TTLs before any request.
	def, err := consullock.New(client, consullock.WithSessionName(sessionName(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = def.Close() })
	before := c.snapshot()
	for _, ttl := range []time.Duration{time.Second, 9 * time.Second, 25 * time.Hour} {
		le, err := def.TryAcquire(ctx, k, ttl)
		var te *lock.TTLError
		if le != nil || !errors.Is(err, lock.ErrInvalidTTL) || !errors.As(err, &te) {
			t.Errorf("TryAcquire with TTL %v on a Locker with the default minimum: got (%v, %v), want a *lock.TTLError", ttl, le, err)
		}
	}
	if d := diff(before, c.snapshot()); len(d) != 0 {
		t.Errorf("refused TTLs made requests %v, want none", d)
	}
	// 9.001s rounds up to 10s, which the minimum allows.
	le := take(t, def, k, 9*time.Second+time.Millisecond)
	if s, _, err := client.Session().Info(holder(t, client, k), nil); err != nil || s == nil || s.TTL != "10s" {
		t.Errorf("session of a 9.001s lease: %+v, %v; want TTL 10s", s, err)
	}
	release(t, le)

	// On the test agent (1s minimum): 1.2s is rounded up to 2s.
	l, _ := newLocker(t)
	sent := time.Now()
	le = take(t, l, k, 1200*time.Millisecond)
	dl := le.(lock.Deadliner).Deadline()
	if got := dl.Sub(sent); got < 2*time.Second-600*time.Millisecond || got > 2*time.Second+conformance.SchedulingSlack {
		t.Errorf("Deadline is %v after the take of a 1.2s lease, want about 2s (rounded up to whole seconds)", got)
	}
	sess, _, err := client.Session().Info(holder(t, client, k), nil)
	if err != nil || sess == nil || sess.TTL != "2s" {
		t.Errorf("session of a 1.2s lease: %+v, %v; want TTL 2s", sess, err)
	}
	if sess != nil && (sess.LockDelay != 0 || sess.Behavior != api.SessionBehaviorDelete || len(sess.NodeChecks) != 0 || len(sess.Checks) != 0) {
		t.Errorf("session %+v: want lock-delay 0, behavior delete and no health checks", sess)
	}
	// A refresh to an unacceptable TTL changes nothing.
	if err := le.Refresh(ctx, 25*time.Hour); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("Refresh(25h): %v, want ErrInvalidTTL", err)
	}
	if _, err := def.TryAcquire(ctx, k, 10*time.Second); !errors.Is(err, lock.ErrNotAcquired) {
		t.Errorf("after a refused Refresh the lease must still hold: TryAcquire got %v", err)
	}
	release(t, le)
}

func TestBadConfiguration(t *testing.T) {
	noLeaks(t)
	client, c := newClient(t)
	before := c.snapshot()
	for name, tc := range map[string]struct {
		client *api.Client
		opt    consullock.Option
	}{
		"nil client":          {nil, nil},
		"min TTL 1.5s":        {client, consullock.WithMinTTL(1500 * time.Millisecond)},
		"negative lock-delay": {client, consullock.WithLockDelay(-time.Second)},
		"lock-delay 61s":      {client, consullock.WithLockDelay(61 * time.Second)},
		"prefix /abs/":        {client, consullock.WithPrefix("/abs/")},
		"prefix no slash":     {client, consullock.WithPrefix("abc")},
		"prefix ..":           {client, consullock.WithPrefix("a/../")},
		"prefix space":        {client, consullock.WithPrefix("a b/")},
		"empty session name":  {client, consullock.WithSessionName("")},
		"record size 0":       {client, consullock.WithMaxRecordSize(0)},
		"keep-warm -1s":       {client, consullock.WithKeepWarm(-time.Second)},
	} {
		if l, err := consullock.New(tc.client, tc.opt); l != nil || !errors.Is(err, lock.ErrInvalidArgument) {
			t.Errorf("%s: New got (%v, %v), want an error matching ErrInvalidArgument", name, l, err)
		}
	}
	// Every bad option is reported, not only the first.
	_, err := consullock.New(client, consullock.WithMinTTL(0), consullock.WithKeepWarm(-1))
	if err == nil || !strings.Contains(err.Error(), "minimum TTL") || !strings.Contains(err.Error(), "keep-warm") {
		t.Errorf("New with two bad options: %v, want both named", err)
	}
	if d := diff(before, c.snapshot()); len(d) != 0 {
		t.Errorf("New with bad options made requests %v", d)
	}
}

// TestKeysOnServer checks where keys land in Consul's KV store and that
// the escaping is injective and URL-safe.
func TestKeysOnServer(t *testing.T) {
	checkNoSessions(t)
	client, _ := newClient(t)
	prefix := "idemlock-test-" + runID + "/"
	l, _ := newLocker(t, consullock.WithPrefix(prefix))
	k := key(t, "a/b c.d~e\x00é")
	le := take(t, l, k, 10*time.Second)
	esc := consullock.EscapeKey(k)
	if !strings.HasSuffix(esc, "~2Fa~2Fb~20c~2Ed~7Ee~00~C3~A9") {
		t.Errorf("EscapeKey(%q) = %q", k, esc)
	}
	pair, _, err := client.KV().Get(prefix+"lock/"+esc, nil)
	if err != nil || pair == nil || pair.Session == "" || pair.ModifyIndex != le.Token() {
		t.Fatalf("the lock of %q under %q: %+v, %v; want it held, at the lease's token %d", k, prefix, pair, err, le.Token())
	}
	if string(pair.Value) != "10s" {
		t.Errorf("lock value %q, want the TTL 10s (read by waiters)", pair.Value)
	}
	release(t, le)
	if pair, _, _ := client.KV().Get(prefix+"lock/"+esc, nil); pair != nil {
		t.Errorf("release left the key in place: %+v", pair)
	}

	seen := map[string]string{}
	for _, k := range []string{"a", "A", "a/b", "a~2Fb", "a%2Fb", "a b", "a+b", "..", ".", "~", "~7E", "\x00", "", "a\x00", "日本", "-_"} {
		e := consullock.EscapeKey(k)
		if prev, dup := seen[e]; dup {
			t.Errorf("EscapeKey(%q) = EscapeKey(%q) = %q", k, prev, e)
		}
		seen[e] = k
		for _, r := range e {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '~') {
				t.Errorf("EscapeKey(%q) = %q holds %q", k, e, r)
			}
		}
	}
}

// TestRefreshOtherTTL moves a lock to a session of another TTL.
func TestRefreshOtherTTL(t *testing.T) {
	checkNoSessions(t)
	client, _ := newClient(t)
	l, _ := newLocker(t)
	other, _ := newLocker(t)
	k := key(t, "k")
	le := take(t, l, k, 2*time.Second)
	first := holder(t, client, k)
	lost := le.(lock.LossNotifier).Lost()
	sent := time.Now()
	if err := le.Refresh(t.Context(), 5*time.Second); err != nil {
		t.Fatalf("Refresh(5s): %v", err)
	}
	second := holder(t, client, k)
	if second == "" || second == first {
		t.Fatalf("after Refresh to another TTL the key is held by %q, was %q: want a new session", second, first)
	}
	if s, _, err := client.Session().Info(second, nil); err != nil || s == nil || s.TTL != "5s" {
		t.Errorf("new session %+v, %v: want TTL 5s", s, err)
	}
	if got := le.(lock.Deadliner).Deadline().Sub(sent); got < 4400*time.Millisecond || got > 5*time.Second+conformance.SchedulingSlack {
		t.Errorf("Deadline %v after Refresh(5s), want about 5s", got)
	}
	// The first TTL has long run out; the lock holds and was not reported lost.
	time.Sleep(4500 * time.Millisecond) // the clock is what is under test
	select {
	case <-lost:
		t.Fatalf("Lost closed after a Refresh moved the lock to another session")
	default:
	}
	if _, err := other.TryAcquire(t.Context(), k, time.Second); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("4.5s after Refresh(5s) of a 2s lease: TryAcquire got %v, want ErrNotAcquired", err)
	}
	if err := le.Refresh(t.Context(), 5*time.Second); err != nil {
		t.Fatalf("Refresh(5s) again (a renewal): %v", err)
	}
	if h := holder(t, client, k); h != second {
		t.Errorf("a same-TTL Refresh moved the lock from %q to %q", second, h)
	}
	release(t, le)
}

// TestLost checks the lost-lease signal.
func TestLost(t *testing.T) {
	checkNoSessions(t)
	noLeaks(t)
	client, _ := newClient(t)
	l, _ := newLocker(t)
	k := key(t, "k")

	le := take(t, l, k, 10*time.Second)
	lost := le.(lock.LossNotifier).Lost()
	if le.(lock.LossNotifier).Lost() != lost {
		t.Errorf("Lost returned two different channels")
	}
	// An operator (or the agent) destroys the session: the key goes with it.
	destroyed := time.Now()
	if _, err := client.Session().Destroy(holder(t, client, k), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
		if d := time.Since(destroyed); d > 500*time.Millisecond+conformance.SchedulingSlack {
			t.Errorf("Lost closed %v after the session was destroyed", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Lost not closed 5s after the lease's session was destroyed")
	}
	if err := le.Refresh(t.Context(), 10*time.Second); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh of a lost lease: %v, want ErrNotHeld", err)
	}
	if err := le.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release of a lost lease: %v, want ErrNotHeld", err)
	}

	// A released lease's watch stops, and its channel stays open.
	le = take(t, l, k, 10*time.Second)
	lost = le.(lock.LossNotifier).Lost()
	release(t, le)
	le2 := take(t, l, k, 10*time.Second)
	select {
	case <-lost:
		t.Errorf("Lost closed after a clean Release (and a new holder)")
	case <-time.After(200 * time.Millisecond):
	}
	release(t, le2)

	// KeepAlive turns the signal into a cancelled context.
	le = take(t, l, k, 10*time.Second)
	kp, err := lock.KeepAlive(t.Context(), le, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Session().Destroy(holder(t, client, k), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-kp.Context().Done():
		if !kp.Lost() {
			t.Errorf("Keeper ended with %v, want a lost lease", kp.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("KeepAlive did not notice the session's destruction within 5s")
	}
	kp.Stop()
}

// TestWaitCancelled checks that a blocked Wait returns at once when its
// context is cancelled, not when the blocking query times out.
func TestWaitCancelled(t *testing.T) {
	checkNoSessions(t)
	noLeaks(t)
	l, _ := newLocker(t)
	w, _ := newLocker(t)
	k := key(t, "k")
	le := take(t, l, k, 30*time.Second)
	sub, err := w.Subscribe(t.Context(), k)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.TryAcquire(t.Context(), k, 30*time.Second)
	var held *lock.NotAcquiredError
	if !errors.As(err, &held) || held.Version == 0 || held.Remaining != 30*time.Second {
		t.Fatalf("TryAcquire of a held key: %v (%+v), want a NotAcquiredError with the holder's index and its 30s TTL", err, held)
	}
	if held.Version != le.Token() {
		t.Errorf("NotAcquiredError.Version = %d, want the holder's index %d", held.Version, le.Token())
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sub.Wait(ctx, held) }()
	time.Sleep(100 * time.Millisecond) // let Wait block; there is no event for that
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v while the key was held", err)
	default:
	}
	cancelled := time.Now()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Wait after cancel: %v, want context.Canceled", err)
	}
	if d := time.Since(cancelled); d > conformance.SchedulingSlack {
		t.Errorf("Wait returned %v after its context was cancelled", d)
	}
	if err := sub.Close(); err != nil {
		t.Error(err)
	}
	if err := sub.Wait(t.Context(), held); err == nil {
		t.Errorf("Wait after Close returned nil")
	}
	release(t, le)
}

// TestLockDelay checks that WithLockDelay reaches the session and that
// the default lets the key be taken as soon as the expired session's key
// is deleted.
func TestLockDelay(t *testing.T) {
	checkNoSessions(t)
	client, _ := newClient(t)
	taker, tc := newLocker(t)
	for _, delay := range []time.Duration{0, 2 * time.Second} {
		l, _ := newLocker(t, consullock.WithLockDelay(delay))
		k := key(t, delay.String())
		le := take(t, l, k, time.Second)
		// Wait for the server to delete the key (the session expired).
		index := le.Token()
		for {
			pair, meta, err := client.KV().Get(consullock.DefaultPrefix+"lock/"+consullock.EscapeKey(k), (&api.QueryOptions{WaitIndex: index}).WithContext(t.Context()))
			if err != nil {
				t.Fatal(err)
			}
			if pair == nil {
				break
			}
			index = meta.LastIndex
		}
		deleted := time.Now()
		le2, err := taker.TryAcquire(t.Context(), k, 10*time.Second)
		switch {
		case delay == 0 && err != nil:
			t.Errorf("with no lock-delay, TryAcquire right after the expiry: %v", err)
		case delay > 0 && !errors.Is(err, lock.ErrNotAcquired):
			t.Errorf("with lock-delay %v, TryAcquire right after the expiry: %v, want ErrNotAcquired", delay, err)
		case delay > 0:
			// Acquire waits out the lock-delay without a storm of refused
			// takes (its end sends no event: it polls at its default cap).
			before := tc.snapshot()
			ctx, cancel := context.WithTimeout(t.Context(), delay+2*time.Second)
			le2, err = lock.Acquire(ctx, taker, k, 10*time.Second)
			cancel()
			if err != nil {
				t.Fatalf("lock-delay %v: Acquire after the expiry: %v", delay, err)
			}
			d := time.Since(deleted)
			if d < delay/2 || d > delay+time.Second {
				t.Errorf("lock-delay %v: Acquire took the key %v after the expiry", delay, d)
			}
			if n := diff(before, tc.snapshot())["txn"]; n > 2*int(delay/lock.DefaultMaxBackoff)+4 {
				t.Errorf("lock-delay %v: Acquire made %d take attempts while waiting", delay, n)
			}
		}
		if le2 != nil {
			release(t, le2)
		}
		if err := le.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
			t.Errorf("Release of the expired lease: %v, want ErrNotHeld", err)
		}
	}
}

// TestClose checks what Close frees and what it leaves.
func TestClose(t *testing.T) {
	checkNoSessions(t)
	noLeaks(t)
	client, _ := newClient(t)
	l, _ := newLocker(t)
	name := sessionName(t)
	var leases []lock.Lease
	for i := range 3 {
		leases = append(leases, take(t, l, key(t, string(rune('a'+i))), 10*time.Second))
	}
	release(t, leases[0])
	release(t, leases[1])
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// Only the held lease's session is left.
	if s := sessions(t, client, name); len(s) != 1 || s[0].ID != holder(t, client, leases[2].Key()) {
		t.Errorf("after Close with one lease held, the agent has sessions %v, want only the holder's", s)
	}
	if _, err := l.TryAcquire(t.Context(), key(t, "z"), 10*time.Second); !errors.Is(err, lock.ErrClosed) {
		t.Errorf("TryAcquire after Close: %v, want ErrClosed", err)
	}
	release(t, leases[2]) // still works, and destroys the session
	if s := sessions(t, client, name); len(s) != 0 {
		t.Errorf("after the last Release following Close, sessions %v are left", s)
	}
}

// TestNoPooling checks WithKeepWarm(0): a session per take, destroyed
// after release.
func TestNoPooling(t *testing.T) {
	checkNoSessions(t)
	l, c := newLocker(t, consullock.WithKeepWarm(0))
	k := key(t, "k")
	before := c.snapshot()
	for range 3 {
		release(t, take(t, l, k, 10*time.Second))
	}
	waitFor(t, 2*time.Second, "destroying released sessions", func() bool { return diff(before, c.snapshot())["session/destroy"] == 3 })
	if d := diff(before, c.snapshot()); d["session/create"] != 3 || d["txn"] != 6 || d["session/renew"] != 0 {
		t.Errorf("3 take+release without pooling made %v, want 3 creates, 6 txn, 3 destroys", d)
	}
}

// burst holds n keys of l at once for ttl, then releases them all: the
// pool is left with (at least) n idle sessions of ttl.
func burst(t *testing.T, l lock.Locker, n int, ttl time.Duration) {
	t.Helper()
	var les []lock.Lease
	for i := range n {
		les = append(les, take(t, l, key(t, strconv.Itoa(i)), ttl))
	}
	for _, le := range les {
		release(t, le)
	}
}

// TestPoolTrimsUnusedSessions checks that the sessions of a burst of
// concurrent takes are destroyed once one take at a time is all the
// Locker does, instead of being renewed every 250 ms until the TTL falls
// out of use: the idle sessions shrink to the one in use and the spare
// within a few trim windows (consullock.TrimAfter), although takes go on.
//
// The windows are the keeper's, and on a starved machine it is late: it
// trims late, and a take that finds no fresh idle session creates one and
// keeps the pool from trimming in that window. So the test fails when
// the burst's sessions are still there after trimWait of calm: takes going
// on with no session created and no stall of the test itself (a loop
// longer than conformance.SchedulingSlack) that the keeper may have
// shared. When calm does not last for giveUp, it judges the takes' creates
// (judgeCreates) and is otherwise inconclusive.
func TestPoolTrimsUnusedSessions(t *testing.T) {
	checkNoSessions(t)
	client, _ := newClient(t)
	var seen *sessionLog
	l, _ := newLockerWith(t, testenv.ConsulAddr(t), func(base http.RoundTripper) http.RoundTripper {
		seen = newSessionLog(base)
		return seen
	})
	const ttl = 10 * time.Second
	burst(t, l, 5, ttl)
	name := sessionName(t)
	if n := len(sessions(t, client, name)); n < 5 {
		t.Fatalf("after a burst of 5 holds, the agent has %d sessions of this test, want at least 5", n)
	}
	// After the window of the last create, one window of single takes
	// trims; one more is slack for the keeper waking late.
	trimWait := 3 * consullock.TrimAfter(ttl)
	giveUp := 10 * consullock.TrimAfter(ttl)
	k := key(t, "k")
	var takes []span
	takeAndRelease := func() {
		sp := span{start: time.Now()}
		le := take(t, l, k, ttl)
		sp.end = time.Now()
		takes = append(takes, sp)
		release(t, le)
	}
	start := time.Now()
	calm, prev := start, start // calm: since when no create or stall
	for {
		takeAndRelease()
		n := len(sessions(t, client, name))
		if n <= 2 {
			break
		}
		now := time.Now()
		if now.Sub(prev) > conformance.SchedulingSlack {
			calm = now
		}
		prev = now
		if cs := seen.createsIn(span{calm, now}); len(cs) > 0 {
			calm = cs[len(cs)-1].sent
		}
		if now.Sub(calm) >= trimWait {
			t.Fatalf("%d sessions of this test after %v of single takes with no session created and no stall, want the one in use and the spare", n, trimWait)
		}
		if now.Sub(start) > giveUp {
			judgeCreates(t, seen, takes, consullock.MaxAge(ttl))
			t.Skipf("%d sessions of this test after %v of single takes, never calm for %v (a session created or the test stalled): inconclusive", n, giveUp, trimWait)
		}
		time.Sleep(5 * time.Millisecond) // polling the agent: trimming sends no event
	}
	judgeCreates(t, seen, takes, consullock.MaxAge(ttl))
	// The survivors are the ones in use: the next takes need no create.
	takes = nil
	const after = 3
	for range after {
		takeAndRelease()
	}
	if late := judgeCreates(t, seen, takes, consullock.MaxAge(ttl)); late == after {
		t.Errorf("all %d takes after trimming saw a session created: none used the sessions kept", after)
	}
}

// TestPooledSessionsVanish checks that a take survives its pooled session
// having been destroyed behind the Locker's back.
func TestPooledSessionsVanish(t *testing.T) {
	checkNoSessions(t)
	client, _ := newClient(t)
	l, _ := newLocker(t)
	k := key(t, "k")
	release(t, take(t, l, k, 10*time.Second))
	for _, s := range sessions(t, client, sessionName(t)) {
		if _, err := client.Session().Destroy(s.ID, nil); err != nil {
			t.Fatal(err)
		}
	}
	le := take(t, l, k, 10*time.Second)
	if h := holder(t, client, k); h == "" {
		t.Errorf("the take after its pooled sessions vanished holds nothing")
	}
	release(t, le)
}

// TestCancelledCreate cancels takes while their session is being created:
// the take returns at once, and the session is not left behind.
func TestCancelledCreate(t *testing.T) {
	checkNoSessions(t)
	noLeaks(t)
	abandoned := 0
	for i := range 10 {
		l, _ := newLocker(t) // cold: the take must create a session
		ctx, cancel := context.WithTimeout(t.Context(), time.Duration(100+50*i)*time.Microsecond)
		start := time.Now()
		le, err := l.TryAcquire(ctx, key(t, "k"), 10*time.Second)
		cancel()
		switch {
		case err == nil:
			release(t, le)
		case errors.Is(err, context.DeadlineExceeded):
			abandoned++
			if d := time.Since(start); d > conformance.SchedulingSlack {
				t.Errorf("a take cancelled during its session's create returned after %v", d)
			}
		default:
			t.Errorf("TryAcquire with a short deadline: %v", err)
		}
	}
	t.Logf("%d of 10 takes gave up during their session's create", abandoned)
}

// TestLostAfterFailedRelease: a lease whose Release found it lost reports
// the loss on its Lost channel, also when Lost is first called after that
// Release.
func TestLostAfterFailedRelease(t *testing.T) {
	checkNoSessions(t)
	noLeaks(t)
	client, _ := newClient(t)
	l, _ := newLocker(t)
	k := key(t, "k")
	le := take(t, l, k, 10*time.Second)
	if _, err := client.Session().Destroy(holder(t, client, k), nil); err != nil {
		t.Fatal(err)
	}
	if err := le.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Release of a lease whose session was destroyed: %v, want ErrNotHeld", err)
	}
	select {
	case <-le.(lock.LossNotifier).Lost():
	default:
		t.Errorf("Lost not closed for a lease whose Release reported ErrNotHeld")
	}
}
