package conformance

import (
	"context"
	"errors"
	"slices"
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
	ctx, cancel := context.WithTimeout(c.ctx(), p.long/2)
	defer cancel()
	type turn struct {
		who      int
		took     time.Time // before its release: the takes' true order
		released time.Time
		err      error
	}
	turns := make(chan turn, queueWaiters)
	ws := make([]*watched, queueWaiters)
	for i := range ws {
		w := watch(p.newLocker(c))
		ws[i] = w
		go func() {
			got, err := lock.Acquire(ctx, w.locker(), key, p.long)
			t := turn{who: i, took: time.Now(), err: err}
			if err == nil {
				t.err = got.Release(context.WithoutCancel(ctx))
				t.released = time.Now()
			}
			turns <- t
		}()
		select {
		case <-w.waiting:
		case <-time.After(p.long / 2):
			c.Fatalf("waiter %d did not start waiting within %v", i, p.long/2)
		}
	}
	released := time.Now()
	c.release(le)
	bound := wakeBound + p.gran
	// The turns arrive in any order (a waiter may report after the next
	// one took and released the key); they are judged in the order of
	// their takes.
	var got []turn
	for n := range queueWaiters {
		select {
		case t := <-turns:
			if t.err != nil {
				c.Fatalf("waiter %d: %v", t.who, t.err)
			}
			got = append(got, t)
		case <-time.After(4 * bound):
			c.Fatalf("waiter %d did not get the key within %v of the previous release: the queue stalled", n, 4*bound)
		}
	}
	slices.SortFunc(got, func(a, b turn) int { return a.took.Compare(b.took) })
	for n, t := range got {
		if t.who != n {
			c.Fatalf("waiter %d got the key in turn %d: waiters were not served in the order they began waiting (want waiter %d)", t.who, n, n)
		}
		if d := ws[t.who].late(released, bound); d > 0 {
			c.Errorf("waiter %d sent the attempt that took the key %v later than %v after the previous holder released it", t.who, d, bound)
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
