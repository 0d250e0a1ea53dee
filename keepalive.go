package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

var (
	// ErrLeaseLost is matched by the cause of a [Keeper]'s context when the
	// lease was lost: a refresh reported [ErrNotHeld] (which the cause also
	// matches), the backend signalled the loss, or the local deadline passed
	// without a successful refresh.
	ErrLeaseLost = errors.New("lock: lease lost")
	// ErrMaxHold is the cause of a [Keeper]'s context when the cap set with
	// [WithMaxHold] was reached.
	ErrMaxHold = errors.New("lock: maximum hold time reached")
	// ErrStopped is the cause of a [Keeper]'s context after [Keeper.Stop] or
	// [Keeper.Release].
	ErrStopped = errors.New("lock: keep-alive stopped")
)

// Keeper renews one lease in the background; see [KeepAlive].
type Keeper struct {
	lease  Lease
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the renewal goroutine has returned
	once   sync.Once

	mu      sync.Mutex
	lastErr error // the latest transient refresh error, for the loss cause
}

// KeepAlive renews lease every third of ttl (see [WithRefreshInterval]) until
// it is stopped, its context ends, or the lease is lost, and returns a
// [Keeper] whose Context is cancelled the moment the lease is lost:
//
//   - a refresh returns [ErrNotHeld];
//   - the lease's local deadline passes without a successful refresh (the
//     deadline is measured on the monotonic clock from before each request
//     was sent, so it never outlasts the server's TTL);
//   - the lease implements [LossNotifier] and reports a loss;
//   - the cap set with [WithMaxHold] is reached (renewal stops there).
//
// A lease already past its deadline (an Acquire whose reply came late) or
// already reported lost gives a Keeper whose Context is cancelled before
// KeepAlive returns. context.Cause of the Keeper's context says which.
// Transient refresh errors are retried until the deadline. The caller must
// call [Keeper.Stop] or [Keeper.Release]; once either returns, no refresh is
// running or will start.
func KeepAlive(ctx context.Context, lease Lease, ttl time.Duration, opts ...Option) (*Keeper, error) {
	if lease == nil {
		return nil, fmt.Errorf("%w: nil Lease", ErrInvalidArgument)
	}
	if err := CheckContext(ctx); err != nil {
		return nil, err
	}
	if err := ValidateTTL(ttl); err != nil {
		return nil, err
	}
	o, err := buildOptions(opts)
	if err != nil {
		return nil, err
	}
	every := o.refreshEvery
	if every == 0 {
		every = ttl / 3
	}
	if every <= 0 || every >= ttl {
		return nil, fmt.Errorf("%w: refresh interval %v must be positive and shorter than the TTL %v", ErrInvalidArgument, every, ttl)
	}

	start := time.Now()
	deadline := start.Add(ttl)
	if d, ok := lease.(Deadliner); ok {
		deadline = d.Deadline()
	}
	kctx, cancel := context.WithCancelCause(ctx)
	if o.maxHold > 0 {
		var stop context.CancelFunc
		kctx, stop = context.WithDeadlineCause(kctx, start.Add(o.maxHold), ErrMaxHold)
		// Both contexts end together; the outer cancel releases the timer.
		outer := cancel
		cancel = func(cause error) { outer(cause); stop() }
	}
	k := &Keeper{lease: lease, ctx: kctx, cancel: cancel, done: make(chan struct{})}
	observeKeeper(ctx, k) // reports a loss when lease is observed (see Observe)
	// A lease that is already past its deadline (an Acquire whose reply
	// came late) or already reported lost is lost before KeepAlive returns,
	// never a moment later: a caller that checks Context().Err() at once
	// must not see a live context for it.
	if !time.Now().Before(deadline) {
		k.cancel(lostError(lease.Key(), "its deadline had passed when KeepAlive was called", nil))
	} else if ln, ok := lease.(LossNotifier); ok {
		select {
		case <-ln.Lost():
			k.cancel(lostError(lease.Key(), "the backend reported it lost", ErrNotHeld))
		default:
		}
	}
	go k.run(deadline, ttl, every)
	return k, nil
}

// Context returns the context to do the protected work under. It is
// cancelled when the lease is lost, the cap is reached, the parent context
// ends, or the Keeper is stopped; context.Cause tells which.
func (k *Keeper) Context() context.Context { return k.ctx }

// Lease returns the lease being renewed.
func (k *Keeper) Lease() Lease { return k.lease }

// Err returns nil while the lease is being kept, and otherwise why it is no
// longer: an error matching [ErrLeaseLost], [ErrMaxHold], [ErrStopped] or the
// parent context's error.
func (k *Keeper) Err() error {
	if k.ctx.Err() == nil {
		return nil
	}
	return context.Cause(k.ctx)
}

// Lost reports whether the lease was lost while being kept (as opposed to
// stopped, capped or abandoned with its parent context).
func (k *Keeper) Lost() bool { return errors.Is(k.Err(), ErrLeaseLost) }

// Stop ends renewal and waits until the renewal goroutine has returned. It
// does not release the lease. Safe to call more than once.
func (k *Keeper) Stop() {
	k.once.Do(func() { k.cancel(ErrStopped) })
	<-k.done
}

// Release stops renewal and then releases the lease with ctx.
func (k *Keeper) Release(ctx context.Context) error {
	k.Stop()
	return k.lease.Release(ctx)
}

func (k *Keeper) run(deadline time.Time, ttl, every time.Duration) {
	defer close(k.done)
	key := k.lease.Key()
	// The loss timer cancels the context at the deadline even while a
	// refresh is in flight.
	loss := time.AfterFunc(time.Until(deadline), func() {
		k.mu.Lock()
		last := k.lastErr
		k.mu.Unlock()
		k.cancel(lostError(key, "no successful refresh before its deadline", last))
	})
	defer loss.Stop()
	var lost <-chan struct{}
	if ln, ok := k.lease.(LossNotifier); ok {
		lost = ln.Lost()
	}
	// The first renewal is due an interval after KeepAlive started, or
	// sooner if the lease is already that far into its TTL (counted back
	// from its deadline): a lease handed over late is renewed before it runs
	// out.
	next := time.NewTimer(min(every, max(0, time.Until(deadline)-(ttl-every))))
	defer next.Stop()
	for {
		select {
		case <-k.ctx.Done():
			return
		case <-lost:
			k.cancel(lostError(key, "the backend reported it lost", ErrNotHeld))
			return
		case <-next.C:
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(k.ctx, deadline)
		err := k.lease.Refresh(rctx, ttl)
		cancel()
		switch {
		case err == nil:
			deadline = sent.Add(ttl)
			if d, ok := k.lease.(Deadliner); ok {
				deadline = d.Deadline()
			}
			if !loss.Stop() {
				return // the deadline passed while the refresh was in flight
			}
			loss.Reset(time.Until(deadline))
			next.Reset(every)
		case errors.Is(err, ErrNotHeld):
			k.cancel(lostError(key, "refresh failed", err))
			return
		default:
			// Transient: retry sooner, until the loss timer ends it.
			k.mu.Lock()
			k.lastErr = err
			k.mu.Unlock()
			next.Reset(max(every/4, time.Millisecond))
		}
	}
}

func lostError(key, why string, err error) error {
	if err == nil {
		return fmt.Errorf("%w: key %q: %s", ErrLeaseLost, displayKey(key), why)
	}
	return fmt.Errorf("%w: key %q: %s: %w", ErrLeaseLost, displayKey(key), why, err)
}
