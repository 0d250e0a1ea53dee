package conformance

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock"
)

// newFaultyLocker returns a Locker whose client faults can be switched on,
// or skips the clause when the backend's test supplies none.
func (p params) newFaultyLocker(c *check) (lock.Locker, Faults) {
	c.Helper()
	if p.NewFaultyLocker == nil {
		c.Skip("optional capability: Config.NewFaultyLocker is not set, so lost replies and stalled requests cannot be injected")
	}
	l, f := p.NewFaultyLocker(c.T)
	if l == nil || f == nil {
		c.T.Fatal("conformance: NewFaultyLocker returned a nil Locker or Faults")
	}
	return l, f
}

// hookCause is the likely cause when a fault did not fire.
const hookCause = "the test's Faults implementation: the fault was not armed for this call, or it fired on another request"

// lostReply checks the error of a call whose reply the fault hook lost:
// the call must fail, with an error that says neither "held by another"
// nor "no longer held".
func (c *check) lostReply(op string, err error) {
	c.Helper()
	switch {
	case err == nil:
		c.Causef(hookCause, "%s after Faults.LoseNextReply returned nil: the reply was not lost", op)
	case errors.Is(err, lock.ErrNotAcquired), errors.Is(err, lock.ErrNotHeld):
		c.Causef("a transport error is reported as a contract answer: only the server's answer may say ErrNotAcquired or ErrNotHeld",
			"%s whose reply was lost after the server applied it: got %v, want an error matching neither ErrNotAcquired nor ErrNotHeld", op, err)
	}
}

// midFlightBound is how long the suite lets a stalled call run after its
// context ended before it stops waiting for it.
const midFlightBound = 2 * time.Second

// midFlight runs call with a context that ends 100ms later, by its deadline
// or, with cancel, by a cancellation, while the call's request is stalled.
// The call must return within SchedulingSlack of that with an error
// matching the context's error.
func (c *check) midFlight(what string, cancel bool, call func(ctx context.Context) error) {
	c.Helper()
	const after = 100 * time.Millisecond
	var (
		ctx   context.Context
		stop  context.CancelFunc
		want  = context.DeadlineExceeded
		ended atomic.Int64 // when the context ended, in Unix nanoseconds
	)
	if cancel {
		ctx, stop = context.WithCancel(c.ctx())
		t := time.AfterFunc(after, func() { // the cancellation under test, not synchronisation
			ended.Store(time.Now().UnixNano())
			stop()
		})
		defer t.Stop()
		want = context.Canceled
	} else {
		ctx, stop = context.WithTimeout(c.ctx(), after)
		dl, _ := ctx.Deadline()
		ended.Store(dl.UnixNano())
	}
	defer stop()
	done := make(chan error, 1)
	go func() { done <- call(ctx) }()
	select {
	case err := <-done:
		returned := time.Now()
		if ctx.Err() == nil {
			c.Causef(hookCause, "%s returned %v before its context ended, although Faults.StallNextRequest stalled its request", what, err)
		}
		if late := returned.Sub(time.Unix(0, ended.Load())); late > SchedulingSlack {
			c.Errorf("%s returned %v after its context ended mid-flight, want within %v", what, late, SchedulingSlack)
		}
		if !errors.Is(err, want) {
			c.Fatalf("%s whose context ended mid-flight: got %v, want an error matching %v", what, err, want)
		}
	case <-time.After(after + midFlightBound):
		c.Fatalf("%s was still blocked %v after its context ended while its request was in flight", what, midFlightBound)
	}
}

// testCancelInFlight stalls the request of a TryAcquire, a Refresh and a
// Release and ends each call's context while it waits for the reply: each
// must return promptly with the context's error. A take that may have been
// applied must not keep the key past its TTL; after the stalled Refresh the
// lease still holds; after the stalled Release a retried Release answers
// nil or ErrNotHeld and the key is free.
func testCancelInFlight(c *check, p params) {
	l, f := p.newFaultyLocker(c)
	other := p.newLocker(c)

	c.stalledTake(p, "TryAcquire", f, l.TryAcquire, other, c.key("take"))

	key := c.key("k")
	le := c.take(l, key, p.long)
	f.StallNextRequest()
	c.midFlight("Refresh", true, func(ctx context.Context) error { return le.Refresh(ctx, p.long) })
	c.disarm(f)
	if err := le.Refresh(c.ctx(), p.long); err != nil {
		c.Fatalf("Refresh after a Refresh that was cancelled mid-flight: %v; nothing else could have taken the key", err)
	}
	f.StallNextRequest()
	c.midFlight("Release", false, func(ctx context.Context) error { return le.Release(ctx) })
	c.disarm(f)
	if err := le.Release(c.ctx()); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		c.Fatalf("Release retried after a Release that timed out mid-flight: %v, want nil or ErrNotHeld", err)
	}
	after, err := other.TryAcquire(c.ctx(), key, p.long)
	if err != nil {
		c.Fatalf("after a retried Release answered, the key must be free: TryAcquire: %v", err)
	}
	c.release(after)
}

// taker is one attempt to take a key: TryAcquire, or Claim of a key that
// was never completed (see claimer).
type taker func(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error)

// stalledTake stalls the request of a take of key and ends its context
// mid-flight: the take must return promptly with the context's error, and
// the key, which the server may or may not have given it, must be free
// again within the take's TTL.
func (c *check) stalledTake(p params, what string, f Faults, take taker, other lock.Locker, key string) {
	c.Helper()
	var sent time.Time
	for attempt := 1; ; attempt++ {
		f.StallNextRequest()
		sent = time.Now()
		var orphan lock.Lease
		c.midFlight(what, false, func(ctx context.Context) error {
			le, err := take(ctx, key, p.short)
			orphan = le
			return err
		})
		if orphan != nil {
			c.Fatalf("%s whose context ended mid-flight returned a Lease and an error", what)
		}
		if !c.disarm(f) || attempt == 3 {
			break
		}
		c.Logf("%s returned with its context before it sent the stalled request (attempt %d); stalling it again", what, attempt)
	}
	c.release(c.awaitFree(other, key, p.long, p.expiryBound(p.short)-time.Since(sent),
		what+" whose context ended mid-flight may hold the key until its TTL, not longer"))
}

// disarm drops a fault nothing took, when f can (see [FaultDisarmer]), and
// reports whether there was one.
func (c *check) disarm(f Faults) bool {
	d, ok := f.(FaultDisarmer)
	return ok && d.Disarm()
}

// lostTake loses the reply of a take of key after the server applied it:
// the key is then held by a holding nobody knows about. Retried on the same
// client, the take either holds the key alone (it recognised or undid its
// own) or is refused; either way the key must be free again within the
// lost take's TTL, not kept alive by anything.
func (c *check) lostTake(p params, what string, f Faults, take taker, other, probe lock.Locker, key string) {
	c.Helper()
	ctx := c.ctx()
	f.LoseNextReply()
	sent := time.Now()
	le, err := take(ctx, key, p.short)
	if err == nil {
		_ = le.Release(ctx)
	}
	c.lostReply(what, err)
	if le != nil {
		c.Fatalf("%s whose reply was lost returned a Lease and an error", what)
	}
	switch retry, err := take(ctx, key, p.long); {
	case err == nil:
		c.refused(probe, key, what+" retried after a lost reply holds the key alone")
		c.release(retry)
		c.release(c.take(other, key, p.long))
	case errors.Is(err, lock.ErrNotAcquired):
		c.release(c.awaitFree(other, key, p.long, p.expiryBound(p.short)-time.Since(sent),
			what+" whose reply was lost must be undone, or end with its TTL"))
	default:
		c.Fatalf("%s retried after one whose reply was lost: %v", what, err)
	}
}

// sameAnswer reports whether two answers of a retried Release agree: both
// nil or both ErrNotHeld.
func sameAnswer(a, b error) bool {
	return (a == nil) == (b == nil) && errors.Is(a, lock.ErrNotHeld) == errors.Is(b, lock.ErrNotHeld)
}

// testUnknownOutcome loses the reply of a Release (once while the key stays
// free, once while another Locker takes it), of a Refresh and of a take,
// each after the server applied the request. Afterwards the lease must
// never report holding a key that another lease holds: Refresh (with the
// lease's own TTL, where fast paths live) reports ErrNotHeld after the lost
// Release; a retried Release answers nil or ErrNotHeld, the same whether or
// not the key was taken since; the lost Refresh left the lease held; the
// lost take holds the key no longer than its TTL.
func testUnknownOutcome(c *check, p params) {
	l, f := p.newFaultyLocker(c)
	other, probe := p.newLocker(c), p.newLocker(c)
	ctx := c.ctx()

	// A lost Release; nobody takes the key.
	k1 := c.key("released")
	a := c.take(l, k1, p.long)
	f.LoseNextReply()
	c.lostReply("Release", a.Release(ctx))
	retryFree := a.Release(ctx)
	if retryFree != nil && !errors.Is(retryFree, lock.ErrNotHeld) {
		c.Fatalf("Release retried after a Release whose reply was lost: %v, want nil or ErrNotHeld", retryFree)
	}
	c.notHeld("Refresh after a Release whose reply was lost", a.Refresh(ctx, p.long))
	c.release(c.take(other, k1, p.long))

	// A lost Release; another Locker takes the key at once.
	k2 := c.key("taken")
	a = c.take(l, k2, p.long)
	f.LoseNextReply()
	c.lostReply("Release", a.Release(ctx))
	newer := c.take(other, k2, p.long)
	for i := range 3 {
		if err := a.Refresh(ctx, p.long); !errors.Is(err, lock.ErrNotHeld) {
			c.Fatalf("Refresh %d (same TTL as the take) after a Release whose reply was lost, while another lease holds the key: got %v, want ErrNotHeld", i+1, err)
		}
	}
	retryTaken := a.Release(ctx)
	if retryTaken != nil && !errors.Is(retryTaken, lock.ErrNotHeld) {
		c.Fatalf("Release retried after a Release whose reply was lost, while another lease holds the key: %v, want nil or ErrNotHeld", retryTaken)
	}
	if !sameAnswer(retryFree, retryTaken) {
		c.Causef("the evidence of the release (a tombstone) is overwritten by the next take, so a retry's answer depends on what happened since",
			"a retried Release of a lock that was released (reply lost) answered %v while the key stayed free but %v once another lease had taken it: the answer must not depend on that",
			errText(retryFree), errText(retryTaken))
	}
	c.refused(probe, k2, "stale calls after a lost Release must leave the newer holder's lock in place")
	c.release(newer)

	// A lost Refresh: the lease still holds.
	k3 := c.key("refreshed")
	a = c.take(l, k3, p.long)
	f.LoseNextReply()
	c.lostReply("Refresh", a.Refresh(ctx, p.long))
	if err := a.Refresh(ctx, p.long); err != nil {
		c.Fatalf("Refresh after a Refresh whose reply was lost: %v; nothing else could take the key", err)
	}
	c.refused(probe, k3, "a lease whose Refresh reply was lost still holds")
	c.release(a)
	c.release(c.take(other, k3, p.long))

	c.lostTake(p, "TryAcquire", f, l.TryAcquire, other, probe, c.key("lost-take"))
}

func errText(err error) string {
	if err == nil {
		return "nil"
	}
	return fmt.Sprintf("%q", err.Error())
}

// watched wraps a waiter's Locker for the clauses that block in
// lock.Acquire: it reports when Acquire has started waiting, records when
// its attempts were sent and answered (see late), and, for
// testWokenWaiterGivesUp, makes a waiter give up (cancel its own context)
// at its first attempt once the test is about to release.
type watched struct {
	lock.Locker
	polls    atomic.Int32
	once     sync.Once
	waiting  chan struct{} // closed when the waiter waits
	giveUp   context.CancelFunc
	lose     Faults       // with releases: loses the reply of the first attempt after the release
	releases *atomic.Bool // set just before the holder releases, by beginRelease
	lostSent time.Time    // when the attempt whose reply lose lost was sent
	handed   bool         // with lose: that attempt sent no request (the key was handed to it)
	// attempting (a semaphore of one) is held by an attempt of a waiter
	// with releases from its check of the flag until its answer came back,
	// and by beginRelease while it sets the flag: an attempt sent before
	// the flag was set is answered before the holder releases.
	attempting chan struct{}

	mu         sync.Mutex
	last, prev roundTrip // the latest TryAcquire and the one before it
}

// roundTrip is when one TryAcquire was sent and when its answer came back.
type roundTrip struct{ sent, answered time.Time }

// watch returns a watched Locker around l.
func watch(l lock.Locker) *watched {
	return &watched{Locker: l, waiting: make(chan struct{}), attempting: make(chan struct{}, 1)}
}

// late returns by how much the waiter's latest attempt (the one that took
// the key) was sent later than bound after from, less the round trip of
// the attempt before it: an answer that came back late (the machine
// stalled) delays the next attempt by as much and proves nothing about the
// backend, as in refusedBefore. Positive means too late.
func (w *watched) late(from time.Time, bound time.Duration) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last.sent.Sub(from) - bound - w.prev.answered.Sub(w.prev.sent)
}

func (w *watched) markWaiting() { w.once.Do(func() { close(w.waiting) }) }

// beginRelease sets the flag that the holder is about to release, once no
// attempt of w is in flight (see attempting). An attempt is one take,
// which answers at once; one still in flight after p.long/2 (when the
// holder's lease, taken for p.long, would soon end without the release the
// clause is about) fails the clause instead of hanging it.
func (w *watched) beginRelease(c *check, p params) {
	c.Helper()
	select {
	case w.attempting <- struct{}{}:
	case <-time.After(p.long / 2):
		c.Causef("the take waits while the key is held (for its release, on the server or in the client) instead of answering ErrNotAcquired at once, and ignores its context",
			"an attempt of the first waiter in lock.Acquire was still in flight %v after the holder was ready to release: a take must make one attempt and answer", p.long/2)
	}
	w.releases.Store(true)
	<-w.attempting
}

func (w *watched) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	return w.attempt(ctx, func() (lock.Lease, error) { return w.Locker.TryAcquire(ctx, key, ttl) })
}

// attempt runs one take of the waiter (a TryAcquire, or a queued Ticket's).
func (w *watched) attempt(ctx context.Context, take func() (lock.Lease, error)) (lock.Lease, error) {
	if w.releases != nil {
		// Without this, an attempt that found the flag unset could reach
		// the server after the release and take the key: neither the
		// give-up nor the lost reply the clause is about would happen.
		w.attempting <- struct{}{}
		defer func() { <-w.attempting }()
	}
	if w.giveUp != nil && w.releases.Load() {
		w.giveUp() // woken, and leaving without taking the key
		return nil, ctx.Err()
	}
	w.mu.Lock()
	losing := w.lose != nil && w.releases.Load() && w.lostSent.IsZero()
	if losing {
		w.lose.LoseNextReply() // woken, and its take's reply will be lost
	}
	w.mu.Unlock()
	sent := time.Now()
	le, err := take()
	w.mu.Lock()
	w.prev, w.last = w.last, roundTrip{sent, time.Now()}
	if losing {
		// A backend whose release hands the key to the head (with a
		// notification) may serve the attempt without a request: then no
		// reply was there to lose, and the fault must not hit the head's
		// Release instead.
		if d, ok := w.lose.(FaultDisarmer); ok && err == nil && d.Disarm() {
			w.handed = true
		}
		w.lostSent = sent
	}
	w.mu.Unlock()
	if _, notify := w.Locker.(lock.Notifier); !notify && errors.Is(err, lock.ErrNotAcquired) && w.polls.Add(1) >= 2 {
		w.markWaiting() // a polling waiter: its second attempt follows a sleep
	}
	return le, err
}

// watchedNotifier is a watched Locker whose backend implements Notifier.
type watchedNotifier struct{ *watched }

func (w watchedNotifier) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	sub, err := w.Locker.(lock.Notifier).Subscribe(ctx, key)
	if err != nil {
		return nil, err
	}
	return watchedSub{sub, w.watched}, nil
}

type watchedSub struct {
	lock.Subscription
	w *watched
}

func (s watchedSub) Wait(ctx context.Context, held *lock.NotAcquiredError) error {
	s.w.markWaiting() // subscribed, so no later release is missed
	return s.Subscription.Wait(ctx, held)
}

func (w *watched) locker() lock.Locker {
	_, queues := w.Locker.(lock.Queuer)
	_, notifies := w.Locker.(lock.Notifier)
	switch {
	case queues && notifies:
		return watchedQueuer{watchedNotifier{w}}
	case notifies:
		return watchedNotifier{w}
	}
	// A Queuer that cannot notify (an observed polling Locker, whose
	// Queue answers ErrUnsupported) is watched as the poller it is.
	return w
}

// waited is how a waiter started by startWaiter ended.
type waited struct {
	w        *watched
	took     time.Time // when Acquire returned: before the Release that lets the next one take
	released time.Time // when its Release returned
	err      error     // Acquire's, or else the Release's
}

// startWaiter runs lock.Acquire of key for p.long on w, in a goroutine
// (done when wg is) that releases what it took and sends how it ended to
// out, and returns once w waits, failing the clause (about who) if it does
// not start waiting within p.long/2.
func (c *check) startWaiter(ctx context.Context, wg *sync.WaitGroup, p params, w *watched, key string, out chan<- waited, who string) {
	c.Helper()
	wg.Go(func() {
		got, err := lock.Acquire(ctx, w.locker(), key, p.long)
		r := waited{w: w, took: time.Now(), err: err}
		if err == nil {
			r.err = got.Release(context.WithoutCancel(ctx))
			r.released = time.Now()
		}
		out <- r
	})
	c.awaitWaiting(p, w, who)
}

// awaitReturn waits for a clause's waiter goroutines (started on wg by
// startWaiter, or alike), whose contexts have ended by then: deferred
// after the cancellations. lock.Acquire returns when its context ends, so
// they return at once; one still blocked after p.long/2 fails the clause
// (unless it failed already, which most likely stranded the waiter) and is
// left to NoGoroutineLeak, so that a waiter the clause stranded (with a
// wait deaf to its context) fails it instead of hanging the suite.
func (c *check) awaitReturn(wg *sync.WaitGroup, p params) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(p.long / 2):
		if c.Failed() { // the failure already reported stranded it, most likely
			c.Logf("a waiter in lock.Acquire was still blocked %v after its context ended", p.long/2)
			return
		}
		c.T.Error(c.message("Ticket.Wait or Subscription.Wait ignores its context and returns only when woken",
			"a waiter in lock.Acquire was still blocked %v after its context ended", p.long/2))
	}
}

// awaitWaiting returns once w waits, failing the clause (about who) if it
// does not within p.long/2.
func (c *check) awaitWaiting(p params, w *watched, who string) {
	c.Helper()
	select {
	case <-w.waiting:
	case <-time.After(p.long / 2):
		c.Fatalf("%s did not start waiting within %v", who, p.long/2)
	}
}

// testWokenWaiterGivesUp has three waiters block in lock.Acquire on a held
// key, one after the other. The first gives up (its context ends) at its
// first attempt after the holder releases: the key must still reach the
// second waiter within one polling interval, and then the third.
func testWokenWaiterGivesUp(c *check, p params) { wokenWaiterGivesUp(c, p, false, headGivesUp) }

// headFault is how the first waiter of wokenWaiterGivesUp fails at its
// first attempt after the holder's release.
type headFault int

const (
	// headGivesUp: its context ends before the attempt.
	headGivesUp headFault = iota
	// headTakeLost: the attempt's reply is lost after the server applied
	// it, so the first waiter may hold the key with a lease nobody has, for
	// the short TTL it asked for.
	headTakeLost
)

// wokenWaiterGivesUp is testWokenWaiterGivesUp; with ordered, the two
// remaining waiters must also get the key in the order they began waiting.
// With headTakeLost the first waiter's Locker is a faulty one; the second
// waiter's bound then starts when the first one's take would have expired.
func wokenWaiterGivesUp(c *check, p params, ordered bool, fault headFault) {
	holder := p.newLocker(c)
	key := c.key("k")
	le := c.take(holder, key, p.long)
	var releasing atomic.Bool
	var wg sync.WaitGroup
	defer c.awaitReturn(&wg, p)
	ctxA, giveUp := context.WithCancel(c.ctx())
	defer giveUp()

	var first *watched
	ttlA := p.long
	if fault == headTakeLost {
		l, f := p.newFaultyLocker(c)
		queuer(c, l)
		first = watch(l)
		first.lose, ttlA = f, p.short
	} else {
		first = watch(p.newLocker(c))
		first.giveUp = giveUp
	}
	first.releases = &releasing
	gaveUp := make(chan error, 1)
	wg.Go(func() {
		got, err := lock.Acquire(ctxA, first.locker(), key, ttlA)
		if err == nil {
			_ = got.Release(context.WithoutCancel(ctxA))
		}
		gaveUp <- err
	})
	c.awaitWaiting(p, first, "the first waiter")

	bound := wakeBound + p.gran
	ctxBC, cancelBC := context.WithTimeout(c.ctx(), p.long/2)
	defer cancelBC()
	results := make(chan waited, 2)
	var second *watched
	for _, who := range []string{"second", "third"} {
		w := watch(p.newLocker(c))
		if second == nil {
			second = w
		}
		c.startWaiter(ctxBC, &wg, p, w, key, results, "the "+who+" waiter")
	}

	first.beginRelease(c, p)
	released := time.Now()
	c.release(le)
	err := <-gaveUp
	switch {
	case fault == headGivesUp && !errors.Is(err, context.Canceled):
		c.Fatalf("the waiter that gave up: Acquire returned %v, want an error matching context.Canceled", err)
	case fault == headTakeLost:
		first.mu.Lock()
		handed := first.handed
		if lost := first.lostSent.Add(p.expiryBound(p.short)); !handed && lost.After(released) {
			released = lost // the lost take may hold the key until then
		}
		first.mu.Unlock()
		switch {
		case !handed:
			c.lostReply("Acquire of the woken head", err)
		case err != nil:
			c.Fatalf("the woken head, handed the key by the release without a request: Acquire returned %v, want the lease", err)
		default:
			released = time.Now() // it released the key it was handed before answering
		}
	}
	var got []waited
	for range 2 {
		select {
		case r := <-results:
			if r.err != nil {
				c.Fatalf("a waiter behind one that gave up: %v", r.err)
			}
			got = append(got, r)
		case <-time.After(time.Until(released) + 4*bound):
			c.Fatalf("%d of the 2 remaining waiters took the key within %v of the release (or of the end of the first waiter's lost take): the wake-up the first waiter did not act on was lost", len(got), 4*bound)
		}
	}
	// The order they took the key in: not the order their results
	// arrived, which the scheduler may swap after the first one released.
	if got[1].took.Before(got[0].took) {
		got[0], got[1] = got[1], got[0]
	}
	if ordered && got[0].w != second {
		c.Fatalf("the third waiter got the key before the second: a queue must serve waiters in the order they began waiting")
	}
	if d := got[0].w.late(released, bound); d > 0 {
		c.Errorf("the next waiter sent the attempt that took the key %v later than %v after the release (beyond the round trip of its attempt before)", d, bound)
	}
	if d := got[1].w.late(got[0].released, bound); d > 0 {
		c.Errorf("the last waiter sent the attempt that took the key %v later than %v after the previous one released it (beyond the round trip of its attempt before)", d, bound)
	}
}
