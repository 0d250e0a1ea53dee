package lock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Acquire takes key for ttl, waiting as long as ctx allows while another lease
// holds it.
//
// When l implements [Notifier], Acquire subscribes after its first failed
// attempt, tries once more, and then sleeps until the backend reports a
// release, so a release between the attempt and the wait is never missed.
// Otherwise it polls with jittered exponential backoff (see [WithBackoff]).
// Either way a wait never lasts past the holder's remaining TTL when the
// backend reports it, because expiry produces no event.
//
// If ctx ends first, the error matches both [ErrNotAcquired] and ctx.Err().
// Errors other than "held" (bad input, a backend failure) are returned at
// once.
func Acquire(ctx context.Context, l Locker, key string, ttl time.Duration, opts ...Option) (lease Lease, err error) {
	var w waiter
	if s := ObserverOf(l); s != nil { // observation (see Observe): one type assertion when off
		defer observeAcquire(ctx, s, key, time.Now(), &w, &lease, &err)
	}
	if l == nil {
		return nil, fmt.Errorf("%w: nil Locker", ErrInvalidArgument)
	}
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	if err := CheckArgs(ctx, key, ttl); err != nil {
		return nil, notAcquiredIfDone(ctx, err)
	}
	w.attempts++
	lease, err = l.TryAcquire(ctx, key, ttl)
	if !errors.Is(err, ErrNotAcquired) {
		return lease, notAcquiredIfDone(ctx, err)
	}

	w.o = o
	if n, ok := l.(Notifier); ok {
		// A failed subscription is not fatal: polling is slower but correct.
		if sub, serr := n.Subscribe(ctx, key); serr == nil {
			w.sub = sub
			defer func() { _ = sub.Close() }()
		}
	}
	for {
		w.attempts++
		lease, err = l.TryAcquire(ctx, key, ttl)
		if !errors.Is(err, ErrNotAcquired) {
			return lease, notAcquiredIfDone(ctx, err)
		}
		var held *NotAcquiredError
		errors.As(err, &held)
		if err := w.wait(ctx, held); err != nil {
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

// waiter sleeps between attempts of one Acquire.
type waiter struct {
	o       options
	sub     Subscription
	backoff time.Duration
	// attempts and wakeups count TryAcquires and release notifications,
	// for observation.
	attempts, wakeups int
}

// wait returns nil when it is time for another attempt, or ctx's error.
func (w *waiter) wait(ctx context.Context, held *NotAcquiredError) error {
	var remaining time.Duration
	if held != nil {
		remaining = held.Remaining
	}
	if w.sub != nil {
		// Wait for a release event, but not past the holder's expiry, and not
		// longer than the polling cap when the expiry is unknown.
		limit := w.o.maxBackoff
		if remaining > 0 {
			limit = remaining + time.Millisecond
		}
		wctx, cancel := context.WithTimeout(ctx, limit)
		err := w.sub.Wait(wctx, held)
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
			_ = w.sub.Close()
			w.sub = nil
		}
	}
	return sleep(ctx, w.nextBackoff(remaining))
}

// nextBackoff returns a full-jitter exponential delay, capped by the holder's
// remaining time when known.
func (w *waiter) nextBackoff(remaining time.Duration) time.Duration {
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
