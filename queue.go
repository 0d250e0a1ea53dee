package lock

import (
	"context"
	"errors"
	"time"
)

// Queuer is an optional interface of a Locker that queues the waiters of a
// key and serves them first come, first served: a release wakes only the
// waiter at the head of the queue, so a hand-off costs the same few
// requests whatever the number of waiters (a [Notifier] wakes them all,
// and each sends a take). [Acquire] discovers it by type assertion and
// then waits through a [Ticket] instead of a [Subscription].
//
// A queue never weakens the contract: a ticket's take is the backend's
// ordinary owner-checked take (fencing, expiry and release are unchanged),
// and the queue only decides which waiter's attempt may succeed while the
// key is free. A waiter that leaves (its context ends, Close) leaves the
// queue at once and passes a wake-up (or the key) it received on to the
// next waiter; a waiter that dies leaves it by expiry, never later than
// the holder's TTL plus a backend-documented grace, because every waiter
// re-checks at the holder's deadline (a backend that hands the key
// straight to the head may hand it to a dead head, which then holds it
// until the TTL of its last attempt runs out, as if that attempt had
// taken it). [Locker.TryAcquire] of a free key does not look at the
// queue (it never waits, and may take a key between two hand-offs); the
// head then finds the key held and keeps its place.
type Queuer interface {
	// Queue returns a ticket for key's queue of waiters. It may cost a
	// request (a subscription); the ticket takes its place in the queue
	// at the latest with its first failed TryAcquire. A backend whose
	// queue is an option returns an error matching errors.ErrUnsupported
	// when the option is off; Acquire then waits unqueued.
	Queue(ctx context.Context, key string) (Ticket, error)
}

// Ticket is one waiter's place in the queue of one key, made by
// [Queuer.Queue]. It is used by one goroutine at a time.
//
// Its Wait blocks until the ticket may be at the head of the queue with the
// key free, or a release handed it the key (spurious wake-ups are allowed,
// missed ones are not; callers bound the wait by held.Remaining), and its
// Close leaves the queue (giving back a key handed to the ticket that
// TryAcquire did not return), waking the next waiter when the key is free,
// so that a head that was woken and leaves never strands the queue. Close
// may be called more than once.
type Ticket interface {
	Subscription
	// TryAcquire makes one attempt to take the ticket's key for ttl, with
	// the backend's ordinary take: it succeeds only when the key is free
	// and no live waiter is queued ahead of this ticket, or when a release
	// handed the key to this ticket (then it may return that lease without
	// a request, its TTL counted from the ticket's last attempt, refreshed
	// if little of ttl is left). Otherwise it returns a *NotAcquiredError
	// (matching [ErrNotAcquired]) whose Remaining bounds the wait: the
	// holder's remaining TTL, or, when the key is free, the time until the
	// waiters ahead expire unless they take it. A failed attempt puts the
	// ticket in the queue, or keeps its place and extends its expiry.
	TryAcquire(ctx context.Context, ttl time.Duration) (Lease, error)
}

// acquireQueued is Acquire's loop through a Ticket. When the ticket's
// wake-ups break, it goes on by polling with plain takes, as Acquire does
// when a Subscription breaks.
func acquireQueued(ctx context.Context, l Locker, t Ticket, key string, ttl time.Duration, o options) (Lease, error) {
	w := &Waiter{o: o, sub: t}
	defer func() { _ = t.Close() }() // the Waiter drops it when its wake-ups break
	for {
		var (
			lease Lease
			err   error
		)
		if w.sub != nil {
			lease, err = t.TryAcquire(ctx, ttl)
		} else {
			lease, err = l.TryAcquire(ctx, key, ttl)
		}
		if !errors.Is(err, ErrNotAcquired) {
			return lease, notAcquiredIfDone(ctx, err)
		}
		if err := w.Wait(ctx, err); err != nil {
			return nil, notAcquiredIfDone(ctx, err)
		}
	}
}
