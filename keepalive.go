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
	// matches), the backend signalled the loss, or the local deadline came
	// within the loss margin (see [KeepAlive]) without a successful refresh.
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
	lease   Lease
	ctx     context.Context
	cancel  context.CancelCauseFunc
	running sync.WaitGroup // renewal in progress, or yet to start
	once    sync.Once
	// start runs renewal when the first refresh is due, for a lease that
	// cannot report a loss (until then nothing can happen to it) or with
	// WithDeferredStart: most short holds never start a goroutine. Nil
	// when renewal started at once.
	start *time.Timer
	// detached: renewal outlasts ctx, ending only at Stop or a loss (see
	// [WithDetached]).
	detached bool

	mu      sync.Mutex
	lastErr error // the latest transient refresh error, for the loss cause
	lost    error // why the lease was lost, kept even if ctx had ended
	stopped bool  // Stop was called
	// halt wakes renewal when stopped or lost, with WithDetached after the
	// context ended with its parent (made only then); closed once halted.
	halt       chan struct{}
	haltClosed bool
	// abort cancels the refresh in flight, with WithDetached, whose
	// context does not end with the Keeper's.
	abort context.CancelFunc
}

// KeepAlive renews lease every third of ttl (see [WithRefreshInterval]) until
// it is stopped, its context ends, or the lease is lost, and returns a
// [Keeper] whose Context is cancelled the moment the lease is lost:
//
//   - a refresh returns [ErrNotHeld];
//   - the lease's local deadline comes without a successful refresh (the
//     deadline is measured on the monotonic clock from before each request
//     was sent, so it never outlasts the server's TTL; the context ends a
//     margin before it, 1% of the TTL plus 2 ms and at most a tenth of the
//     TTL, so that a timer fired late on a loaded machine, and the holder's
//     reaction to the cancellation, still come before the server could
//     hand the key on);
//   - the lease implements [LossNotifier] and reports a loss;
//   - the cap set with [WithMaxHold] is reached (renewal stops there).
//
// A lease already within the margin of its deadline (an Acquire whose
// reply came late) or already reported lost gives a Keeper whose Context
// is cancelled before KeepAlive returns. context.Cause of the Keeper's
// context says which. Transient refresh errors are retried until the
// margin before the deadline. The caller must call [Keeper.Stop] or
// [Keeper.Release]; once either returns, no refresh is running or will
// start.
//
// Renewal lasts as long as ctx, or, with [WithDetached], until Stop or a
// loss even after ctx ended. A lease that does not implement [Deadliner] is
// taken to end ttl after KeepAlive is called, or after the time given with
// [WithAcquiredAt]. Renewal starts its goroutine when the first refresh is
// due, or at once for a lease that implements [LossNotifier], whose loss it
// must watch for meanwhile (unless [WithDeferredStart] says otherwise).
func KeepAlive(ctx context.Context, lease Lease, ttl time.Duration, opts ...KeepAliveOption) (*Keeper, error) {
	o, err := buildOptions(opts, KeepAliveOption.applyKeepAlive)
	if err != nil {
		return nil, err
	}
	return keepAlive(ctx, lease, ttl, o)
}

func keepAlive(ctx context.Context, lease Lease, ttl time.Duration, o options) (*Keeper, error) {
	if lease == nil {
		return nil, fmt.Errorf("%w: nil Lease", ErrInvalidArgument)
	}
	if err := CheckContext(ctx); err != nil {
		return nil, err
	}
	if err := ValidateTTL(ttl); err != nil {
		return nil, err
	}
	if o.detached && o.maxHold > 0 {
		return nil, fmt.Errorf("%w: WithMaxHold and WithDetached together", ErrInvalidArgument)
	}
	every := o.refreshEvery
	if every == 0 {
		every = ttl / 3
	}
	margin := lossMargin(ttl)
	if every <= 0 || every >= ttl-margin {
		return nil, fmt.Errorf("%w: refresh interval %v must be positive and shorter than the TTL %v less its loss margin %v", ErrInvalidArgument, every, ttl, margin)
	}

	start := time.Now()
	deadline := start.Add(ttl)
	if !o.acquiredAt.IsZero() {
		deadline = o.acquiredAt.Add(ttl)
	}
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
	k := &Keeper{lease: lease, ctx: kctx, cancel: cancel, detached: o.detached}
	k.running.Add(1) // done by run, or by Stop if run never starts
	// A lease already within the margin of its deadline (an Acquire whose
	// reply came late) or already reported lost is lost before KeepAlive
	// returns, never a moment later: a caller that checks Context().Err()
	// at once must not see a live context for it.
	if !time.Now().Before(deadline.Add(-margin)) {
		k.lose(lostError(lease.Key(), fmt.Sprintf("its deadline was less than the loss margin %v away when KeepAlive was called", margin), nil))
	} else if ln, ok := lease.(LossNotifier); ok {
		select {
		case <-ln.Lost():
			k.lose(lostError(lease.Key(), "the backend reported it lost", ErrNotHeld))
		default:
		}
	}
	// The first renewal is due an interval after KeepAlive started, or
	// sooner if the lease is already that far into its TTL (counted back
	// from its deadline): a lease handed over late is renewed before it runs
	// out.
	first := min(every, max(0, time.Until(deadline)-(ttl-every)))
	if _, ok := lease.(LossNotifier); ok && !o.deferred {
		go k.run(deadline, ttl, margin, every, first)
	} else {
		k.start = time.AfterFunc(first, func() { k.run(deadline, ttl, margin, every, 0) })
	}
	return k, nil
}

// Context returns the context to do the protected work under. It is
// cancelled when the lease is lost, the cap is reached, the parent context
// ends, or the Keeper is stopped; context.Cause tells which.
func (k *Keeper) Context() context.Context { return k.ctx }

// Lease returns the lease being renewed.
func (k *Keeper) Lease() Lease { return k.lease }

// Err returns nil while the Keeper's context lives, and otherwise why it
// ended: an error matching [ErrLeaseLost], [ErrMaxHold], [ErrStopped] or the
// parent context's error. A loss is reported even if it came after the
// parent context ended (renewal goes on then with [WithDetached]).
func (k *Keeper) Err() error {
	k.mu.Lock()
	lost := k.lost
	k.mu.Unlock()
	if lost != nil {
		return lost
	}
	if k.ctx.Err() == nil {
		return nil
	}
	return context.Cause(k.ctx)
}

// lose records that the lease was lost and cancels the context with cause.
func (k *Keeper) lose(cause error) {
	k.mu.Lock()
	// Once stopped, or (without WithDetached) once the context ended, a
	// loss is no longer the Keeper's to report.
	live := !k.stopped && (k.detached || k.ctx.Err() == nil)
	first := k.lost == nil && live
	if first {
		k.lost = cause
		k.wakeLocked()
	}
	k.mu.Unlock()
	if first {
		observeLoss(k, cause) // when the lease is observed (see Observe)
	}
	k.cancel(cause)
}

// halted reports whether renewal must end: the context ended, or with
// [WithDetached] the Keeper was stopped or the lease lost.
// wakeLocked closes halt, if made, once renewal must end. k.mu is held.
func (k *Keeper) wakeLocked() {
	if k.halt != nil && !k.haltClosed {
		k.haltClosed = true
		close(k.halt)
	}
}

// haltChan returns the channel that wakes renewal once it must end, made
// when first asked (with WithDetached, once the context ended with its
// parent).
func (k *Keeper) haltChan() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.halt == nil {
		k.halt = make(chan struct{})
		if k.stopped || k.lost != nil {
			k.wakeLocked()
		}
	}
	return k.halt
}

func (k *Keeper) halted() bool {
	if !k.detached {
		return k.ctx.Err() != nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stopped || k.lost != nil
}

// Lost reports whether the lease was lost while being kept (as opposed to
// stopped, capped or abandoned with its parent context).
func (k *Keeper) Lost() bool { return errors.Is(k.Err(), ErrLeaseLost) }

// Stop ends renewal and waits until the renewal goroutine has returned,
// and with it the report of a loss it found (so an observer must not call
// Stop while it is handed that loss). It does not release the lease. Safe
// to call more than once.
func (k *Keeper) Stop() {
	k.once.Do(func() {
		if ln, ok := k.lease.(LossNotifier); ok && k.start != nil {
			// WithDeferredStart: a loss reported before renewal started
			// is still the Keeper's to report.
			select {
			case <-ln.Lost():
				k.lose(lostError(k.lease.Key(), "the backend reported it lost", ErrNotHeld))
			default:
			}
		}
		k.mu.Lock()
		k.stopped = true
		k.wakeLocked()
		abort := k.abort
		k.mu.Unlock()
		k.cancel(ErrStopped)
		if abort != nil {
			abort()
		}
		if k.start != nil && k.start.Stop() {
			k.running.Done() // renewal never started and never will
		}
	})
	k.running.Wait()
}

// Release stops renewal and then releases the lease with ctx.
func (k *Keeper) Release(ctx context.Context) error {
	k.Stop()
	return k.lease.Release(ctx)
}

// lossMargin is how long before a lease's deadline a Keeper declares it
// lost: 1% of the TTL plus 2 ms (the clock-drift allowance of Redis's
// Redlock algorithm), at most a tenth of the TTL. The deadline is the
// earliest moment the server could expire the lease and hand the key on;
// cancelling the context at that very moment would leave no time for a
// late timer (a loaded machine fires timers milliseconds late) nor for the
// holder to see the cancellation. The torture harness caught it: at load
// 29 on 2 cores a Redis holder's context ended 4.7 ms after another
// worker had taken the key.
func lossMargin(ttl time.Duration) time.Duration {
	return min(ttl/100+2*time.Millisecond, ttl/10)
}

// run renews the lease until it is lost or the Keeper's context ends; the
// first refresh is due after first.
func (k *Keeper) run(deadline time.Time, ttl, margin, every, first time.Duration) {
	defer k.running.Done()
	if k.halted() {
		return
	}
	key := k.lease.Key()
	// The loss timer cancels the context margin before the deadline, even
	// while a refresh is in flight. Renewal ends only once a loss it began
	// reporting is reported: Stop must not return while an observer is
	// still being told of it. The timer fires at most once: it is reset
	// only after a Stop that found it pending.
	fired := make(chan struct{})
	loss := time.AfterFunc(time.Until(deadline)-margin, func() {
		defer close(fired)
		k.mu.Lock()
		last := k.lastErr
		k.mu.Unlock()
		k.lose(lostError(key, "no successful refresh before its deadline, less the loss margin", last))
	})
	defer func() {
		if !loss.Stop() {
			<-fired
		}
	}()
	var lost <-chan struct{}
	if ln, ok := k.lease.(LossNotifier); ok {
		lost = ln.Lost()
	}
	next := time.NewTimer(first)
	defer next.Stop()
	// Renewal ends with the context, or with WithDetached only when stopped
	// or lost: an end of the context with its parent is noted and ignored.
	ended := k.ctx.Done()
	for {
		select {
		case <-ended:
			if k.halted() {
				return
			}
			// WithDetached, and the parent ended: renew on until
			// stopped or lost.
			ended = k.haltChan()
			continue
		case <-lost:
			k.lose(lostError(key, "the backend reported it lost", ErrNotHeld))
			return
		case <-next.C:
		}
		sent := time.Now()
		rctx, cancel := k.refreshContext(deadline)
		if rctx == nil {
			return // stopped
		}
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
			loss.Reset(time.Until(deadline) - margin)
			next.Reset(every)
		case errors.Is(err, ErrNotHeld):
			k.lose(lostError(key, "refresh failed", err))
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

// refreshContext returns the context of one refresh, ending at deadline and
// when the Keeper stops; nil once it stopped.
func (k *Keeper) refreshContext(deadline time.Time) (context.Context, context.CancelFunc) {
	if !k.detached {
		return context.WithDeadline(k.ctx, deadline)
	}
	// The Keeper's context may have ended with its parent: the refresh
	// keeps its values only, and Stop aborts it.
	rctx, cancel := context.WithDeadline(context.WithoutCancel(k.ctx), deadline)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		cancel()
		return nil, nil
	}
	k.abort = cancel
	return rctx, func() {
		k.mu.Lock()
		k.abort = nil
		k.mu.Unlock()
		cancel()
	}
}

func lostError(key, why string, err error) error {
	if err == nil {
		return fmt.Errorf("%w: key %q: %s", ErrLeaseLost, displayKey(key), why)
	}
	return fmt.Errorf("%w: key %q: %s: %w", ErrLeaseLost, displayKey(key), why, err)
}
