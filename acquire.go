package lock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Acquire takes key for ttl, waiting as long as ctx allows while another lease
// holds it, paced by a [Waiter].
//
// When l implements [Queuer], Acquire waits in the key's queue through a
// [Ticket] (first come, first served; a release wakes only the head).
// Otherwise, when l implements [Notifier], Acquire subscribes after its first failed
// attempt, tries once more, and then sleeps until the backend reports a
// release, so a release between the attempt and the wait is never missed.
// Otherwise it polls with jittered exponential backoff (see [WithBackoff]).
// Either way a wait never lasts past the holder's remaining TTL when the
// backend reports it, because expiry produces no event.
//
// If ctx ends first, the error matches both [ErrNotAcquired] and ctx.Err().
// Errors other than "held" (bad input, a backend failure) are returned at
// once.
func Acquire(ctx context.Context, l Locker, key string, ttl time.Duration, opts ...AcquireOption) (Lease, error) {
	o, err := buildOptions(opts, AcquireOption.applyAcquire)
	if err != nil {
		return nil, err
	}
	return acquire(ctx, l, key, ttl, o)
}

func acquire(ctx context.Context, l Locker, key string, ttl time.Duration, o options) (lease Lease, err error) {
	var w *Waiter
	attempts := 1
	if s := ObserverOf(l); s != nil { // observation (see Observe): a type switch when off
		defer observeAcquire(ctx, s, key, time.Now(), &attempts, &w, &lease, &err)
	}
	if l == nil {
		return nil, fmt.Errorf("%w: nil Locker", ErrInvalidArgument)
	}
	if err := CheckArgs(ctx, key, ttl); err != nil {
		return nil, notAcquiredIfDone(ctx, err)
	}
	if q, ok := l.(Queuer); ok {
		// A failed Queue is not fatal: unqueued waiting is correct too.
		if t, qerr := q.Queue(ctx, key); qerr == nil {
			return acquireQueued(ctx, l, t, key, ttl, o)
		}
	}
	lease, err = l.TryAcquire(ctx, key, ttl)
	if !errors.Is(err, ErrNotAcquired) {
		return lease, notAcquiredIfDone(ctx, err)
	}
	w = newWaiter(ctx, l, key, o)
	defer w.Close()
	for {
		attempts++
		lease, err = l.TryAcquire(ctx, key, ttl)
		if !errors.Is(err, ErrNotAcquired) {
			return lease, notAcquiredIfDone(ctx, err)
		}
		if err := w.Wait(ctx, err); err != nil {
			return nil, notAcquiredIfDone(ctx, err)
		}
	}
}

// notAcquiredIfDone makes an error caused by the end of ctx match
// ErrNotAcquired as well as ctx.Err().
func notAcquiredIfDone(ctx context.Context, err error) error {
	if err == nil || ctx == nil || ctx.Err() == nil {
		return err
	}
	if errors.Is(err, ErrNotAcquired) && errors.Is(err, ctx.Err()) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrNotAcquired, ctx.Err())
}

// Waiter paces the attempts of one caller that waits for a key another
// lease holds: [Acquire] uses one between its TryAcquire calls, and a helper
// that takes keys by other means (an idempotency Store's Claim) uses one the
// same way:
//
//	w, err := lock.NewWaiter(ctx, store, key)
//	...
//	defer w.Close()
//	for {
//		lease, err := take(ctx, key) // an error matching ErrNotAcquired while held
//		if !errors.Is(err, lock.ErrNotAcquired) {
//			return lease, err
//		}
//		if err := w.Wait(ctx, err); err != nil {
//			return nil, err // ctx ended
//		}
//	}
//
// When the backend implements [Notifier], Wait sleeps until it reports a
// release; otherwise, or once the subscription breaks, it polls with
// jittered exponential backoff (see [WithBackoff]). Either way a wait never
// lasts past the holder's remaining TTL when the backend reports it (a
// [*NotAcquiredError]'s Remaining), because expiry produces no event. A
// Waiter is for one goroutine.
type Waiter struct {
	o       options
	sub     Subscription
	backoff time.Duration
	wakeups int // release notifications that ended a Wait, for observation
}

// NewWaiter returns a Waiter for key on backend. When backend implements
// [Notifier] it subscribes to key with ctx, which bounds only the
// subscription call: make the Waiter after the first failed attempt and try
// once more before the first Wait, so that a release between the attempt
// and the subscription is never missed. A failed subscription is not an
// error: the Waiter then polls, slower but correct. The error is for an
// invalid option. Call [Waiter.Close] when done.
func NewWaiter(ctx context.Context, backend any, key string, opts ...AcquireOption) (*Waiter, error) {
	o, err := buildOptions(opts, AcquireOption.applyAcquire)
	if err != nil {
		return nil, err
	}
	return newWaiter(ctx, backend, key, o), nil
}

func newWaiter(ctx context.Context, backend any, key string, o options) *Waiter {
	w := &Waiter{o: o}
	if n, ok := backend.(Notifier); ok {
		if sub, err := n.Subscribe(ctx, key); err == nil && sub != nil {
			w.sub = sub
		}
	}
	return w
}

// Close ends the Waiter's subscription, if any.
func (w *Waiter) Close() {
	if w.sub != nil {
		_ = w.sub.Close()
		w.sub = nil
	}
}

// Wait returns nil when it is time for another attempt, or ctx's error when
// ctx ends first. held is the error of the failed attempt; when it is (or
// wraps) a [*NotAcquiredError] its Remaining caps the wait.
func (w *Waiter) Wait(ctx context.Context, held error) error {
	var na *NotAcquiredError
	errors.As(held, &na)
	var remaining time.Duration
	if na != nil {
		remaining = na.Remaining
	}
	if w.sub != nil {
		// Wait for a release event, but not past the holder's expiry, and not
		// longer than the polling cap when the expiry is unknown.
		limit := w.o.maxBackoff
		if remaining > 0 {
			limit = remaining + time.Millisecond
		}
		wctx, cancel := context.WithTimeout(ctx, limit)
		err := w.sub.Wait(wctx, na)
		cancel()
		switch {
		case err == nil:
			w.wakeups++
			return nil
		case ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			// The subscription broke: fall back to polling from now on.
			w.Close()
		}
	}
	return sleep(ctx, w.nextBackoff(remaining))
}

// nextBackoff returns a full-jitter exponential delay, capped by the holder's
// remaining time when known.
func (w *Waiter) nextBackoff(remaining time.Duration) time.Duration {
	if w.backoff == 0 {
		w.backoff = w.o.minBackoff
	} else {
		w.backoff = min(2*w.backoff, w.o.maxBackoff)
	}
	d := w.o.minBackoff/2 + rand.N(w.backoff)
	if remaining > 0 && d > remaining {
		d = remaining
	}
	return d
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
