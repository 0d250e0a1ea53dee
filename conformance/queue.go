package conformance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/idemlock/lock"
)

// queueWaiters is how many waiters testQueueOrder queues behind a holder.
const queueWaiters = 5

// queuer skips the clause when l does not claim first-come-first-served
// waiting: it is not a lock.Queuer, or its Queue answers
// errors.ErrUnsupported (a backend whose queue is an option that is off).
func queuer(c *check, l lock.Locker) {
	q, ok := l.(lock.Queuer)
	if !ok {
		c.Skipf("optional capability: %T does not implement lock.Queuer; waiters are not served in arrival order", l)
	}
	t, err := q.Queue(c.ctx(), c.key("probe"))
	if errors.Is(err, errors.ErrUnsupported) {
		c.Skipf("optional capability: %T does not queue as configured: %v", l, err)
	}
	if err != nil {
		c.Fatalf("Queue: %v", err)
	}
	if err := t.Close(); err != nil {
		c.Errorf("Ticket.Close of a ticket that never waited: %v", err)
	}
}

// testQueueOrder queues waiters in lock.Acquire one after the other behind
// a holder (each from its own Locker, as separate processes would) and
// releases: each must get the key in the order it began waiting, each
// within one polling interval of the previous holder's release.
func testQueueOrder(c *check, p params) {
	holder := p.newLocker(c)
	queuer(c, holder)
	key := c.key("k")
	le := c.take(holder, key, p.long)
	var wg sync.WaitGroup
	defer c.awaitReturn(&wg, p)
	ctx, cancel := context.WithTimeout(c.ctx(), p.long/2)
	defer cancel()
	turns := make(chan waited, queueWaiters)
	ws := make([]*watched, queueWaiters)
	for i := range ws {
		ws[i] = watch(p.newLocker(c))
		c.startWaiter(ctx, &wg, p, ws[i], key, turns, fmt.Sprintf("waiter %d", i))
	}
	released := time.Now()
	c.release(le)
	bound := wakeBound + p.gran
	// The turns arrive in any order (a waiter may report after the next
	// one took and released the key); they are judged in the order of
	// their takes.
	var got []waited
	for n := range queueWaiters {
		select {
		case t := <-turns:
			if t.err != nil {
				c.Fatalf("waiter %d: %v", slices.Index(ws, t.w), t.err)
			}
			got = append(got, t)
		case <-time.After(4 * bound):
			c.Fatalf("waiter %d did not get the key within %v of the previous release: the queue stalled", n, 4*bound)
		}
	}
	slices.SortFunc(got, func(a, b waited) int { return a.took.Compare(b.took) })
	for n, t := range got {
		who := slices.Index(ws, t.w)
		if who != n {
			c.Fatalf("waiter %d got the key in turn %d: waiters were not served in the order they began waiting (want waiter %d)", who, n, n)
		}
		if d := t.w.late(released, bound); d > 0 {
			c.Errorf("waiter %d sent the attempt that took the key %v later than %v after the previous holder released it", who, d, bound)
		}
		released = t.released
	}
}

// testQueueHeadGivesUp is testWokenWaiterGivesUp on a queue: the head is
// woken by the release and leaves; the next two waiters must get the key
// in arrival order, each within one polling interval.
func testQueueHeadGivesUp(c *check, p params) {
	queuer(c, p.newLocker(c))
	wokenWaiterGivesUp(c, p, true, headGivesUp)
}

// testQueueHeadTakeLost is testQueueHeadGivesUp with a head whose take,
// after the release woke it, was applied by the server but its reply lost:
// Acquire fails with an error of unknown outcome, and the next two waiters
// must get the key in arrival order, the first of them within one polling
// interval of when the lost take's short TTL ran out (sooner if the
// backend undoes it), not when the first holder's long TTL would have.
func testQueueHeadTakeLost(c *check, p params) {
	queuer(c, p.newLocker(c))
	wokenWaiterGivesUp(c, p, true, headTakeLost)
}

// watchedQueuer is a watched Locker whose backend implements Queuer (and
// Notifier): its tickets report waiting and time their attempts as the
// watched Locker does.
type watchedQueuer struct{ watchedNotifier }

func (w watchedQueuer) Queue(ctx context.Context, key string) (lock.Ticket, error) {
	t, err := w.Locker.(lock.Queuer).Queue(ctx, key)
	if err != nil {
		return nil, err
	}
	return watchedTicket{t, w.watched}, nil
}

type watchedTicket struct {
	lock.Ticket
	w *watched
}

func (t watchedTicket) Wait(ctx context.Context, held *lock.NotAcquiredError) error {
	t.w.markWaiting() // queued and woken by releases from now on
	return t.Ticket.Wait(ctx, held)
}

func (t watchedTicket) TryAcquire(ctx context.Context, ttl time.Duration) (lock.Lease, error) {
	return t.w.attempt(ctx, func() (lock.Lease, error) { return t.Ticket.TryAcquire(ctx, ttl) })
}

// testQueueTicketRetryAfterLostTake is for direct Ticket users, who may
// retry a take whose outcome is unknown (lock.Acquire gives up instead). A
// ticket queues at the head behind a holder of a long TTL, a waiter in
// lock.Acquire queues behind it, and the holder releases. The ticket, woken,
// takes the key, but the take's reply is lost after the server applied it:
// the key is held by a take nobody has a lease for, for a short TTL. The
// ticket retries; in the second round the retry's reply is lost too and the
// ticket is then closed. Either way the waiter behind, whose wait is bounded
// by the holder's long TTL, must get the key within one polling interval of
// when the lost takes' short TTL ran out (sooner if the backend undoes
// them), or of when the ticket's last call returned if that is later.
func testQueueTicketRetryAfterLostTake(c *check, p params) {
	queuer(c, p.newLocker(c))
	l, f := p.newFaultyLocker(c)
	queuer(c, l)
	ticketRetryAfterLostTake(c, p, l, f, false)
	ticketRetryAfterLostTake(c, p, l, f, true)
}

// ticketRetryAfterLostTake is one round of
// testQueueTicketRetryAfterLostTake on a key of its own: the ticket is l's
// and f loses its replies; with loseRetry the retry's reply is lost too.
func ticketRetryAfterLostTake(c *check, p params, l lock.Locker, f Faults, loseRetry bool) {
	round, key := "retry answered", c.key("answered")
	if loseRetry {
		round, key = "retry's reply lost too", c.key("lost")
	}
	holder := p.newLocker(c)
	le := c.take(holder, key, p.long)
	tk, err := l.(lock.Queuer).Queue(c.ctx(), key)
	if err != nil {
		c.Fatalf("%s: Queue: %v", round, err)
	}
	defer func() { _ = tk.Close() }()
	// The ticket takes its place at the head. Its attempt's TTL is so short
	// that by the release it has run out: a backend that hands the key to
	// the head on release, with the TTL of its last attempt, wakes it
	// instead, and the ticket takes the key with a request.
	_, err = tk.TryAcquire(c.ctx(), time.Millisecond)
	var refused *lock.NotAcquiredError
	if !errors.As(err, &refused) {
		c.Fatalf("%s: a ticket's take of a held key: %v, want a *lock.NotAcquiredError", round, err)
	}

	var wg sync.WaitGroup
	defer c.awaitReturn(&wg, p)
	ctx, cancel := context.WithTimeout(c.ctx(), p.long/2)
	defer cancel()
	w := watch(p.newLocker(c))
	behind := make(chan waited, 1)
	c.startWaiter(ctx, &wg, p, w, key, behind, round+": the waiter behind the ticket")
	c.release(le)

	// The head waits for the release's wake-up, as a Ticket user does,
	// and takes the key; the take is applied, its reply lost.
	wctx, wcancel := context.WithTimeout(c.ctx(), p.long/2)
	defer wcancel()
	var lostSent time.Time
	for {
		if err := tk.Wait(wctx, refused); err != nil {
			c.Fatalf("%s: the head ticket was not woken by the release: Wait: %v", round, err)
		}
		f.LoseNextReply()
		lostSent = time.Now()
		got, err := tk.TryAcquire(c.ctx(), p.short)
		if err == nil && c.disarm(f) {
			// The key was handed to the ticket without a request after
			// all: there was no reply to lose.
			c.release(got)
			c.Skipf("%s: the release handed the key to the ticket although its last attempt's TTL had run out, so its take sent no request whose reply could be lost", round)
		}
		if errors.As(err, &refused) && c.disarm(f) {
			continue // refused without a request: a spurious wake-up
		}
		c.lostReply(round+": the head ticket's take after the release", err)
		break
	}

	// The retry.
	if loseRetry {
		f.LoseNextReply()
	}
	retrySent := time.Now()
	got, err := tk.TryAcquire(c.ctx(), p.short)
	// Until the ticket's next call (the retry, or Close), only the lost
	// take's TTL could end the wait of the waiter behind: its bound starts
	// when that TTL ran out, or when the call returned if that is later
	// (a reconnection after the lost reply may make it slow).
	freeBy := later(lostSent.Add(p.expiryBound(p.short)), time.Now())
	// A retry refused without a request (by what the ticket knows) had no
	// reply to lose.
	lost := loseRetry && !c.disarm(f)
	if loseRetry && !lost {
		c.Logf("%s: the retry sent no request (answered %v), so it had no reply to lose", round, errText(err))
	}
	switch {
	case lost:
		c.lostReply(round+": the ticket's retry of a take whose reply was lost", err)
		// The retry may have taken the key too, for as long.
		freeBy = later(freeBy, retrySent.Add(p.expiryBound(p.short)))
	case err == nil:
		// The lost take was undone, and the retry found the key free
		// with nobody ahead.
		c.release(got)
		freeBy = time.Now()
	case !errors.Is(err, lock.ErrNotAcquired):
		c.Fatalf("%s: the ticket's retry of a take whose reply was lost: %v, want a lease or an error matching ErrNotAcquired", round, err)
	}
	if loseRetry {
		if err := tk.Close(); err != nil {
			c.Fatalf("%s: Close of a ticket after takes of unknown outcome: %v", round, err)
		}
		freeBy = later(freeBy, time.Now())
	}

	bound := wakeBound + p.gran
	select {
	case r := <-behind:
		if r.err != nil {
			c.Fatalf("%s: the waiter behind the ticket: %v", round, r.err)
		}
		if d := w.late(freeBy, bound); d > 0 {
			c.Errorf("%s: the waiter behind the ticket sent the attempt that took the key %v later than %v after the lost takes' TTL ran out or the ticket's last call returned (beyond the round trip of its attempt before)", round, d, bound)
		}
	case <-time.After(time.Until(freeBy) + 4*bound):
		c.Fatalf("%s: the waiter behind the ticket did not get the key within %v of the end of the lost takes' TTL of %v (or of the ticket's last call): nobody woke it, and it waits out the previous holder's %v", round, 4*bound, p.short, p.long)
	}
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
