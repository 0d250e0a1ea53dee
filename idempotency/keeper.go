package idempotency

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/idemlock/lock"
)

// keeper keeps one claimed lease alive while the work runs, with
// lock.KeepAlive, started lazily: most guarded work finishes long before a
// third of the lease TTL, when the first refresh is due, so the renewal
// goroutine and its timers are only set up for work that lasts that long.
// Until then the lease cannot expire, and the work's context is cancelled
// the moment the Keeper reports the lease lost, exactly as with an eager
// KeepAlive.
//
// Renewal lasts exactly as long as the work: it runs on a context that
// keeps the parent's values but not its cancellation, so a client that
// disconnects (net/http cancels r.Context()) or a caller that cancels a
// worker's context never ends it while the handler or function is still
// running — only Stop (the work returned) or a real loss of the lease
// does. The work's own context does end with the parent, and with a loss.
type keeper struct {
	tl     trackedLease
	lease  *trackedLease // &tl
	ttl    time.Duration
	parent context.Context
	ctx    context.Context // the work's context: parent + loss
	cancel context.CancelCauseFunc
	timer  *time.Timer

	mu      sync.Mutex
	k       *lock.Keeper // nil until started
	stopped bool
	lost    error // why the lease was lost, or nil
}

// keep starts keeping lease, claimed with a request sent at sent, for work
// running under parent.
func (g *Guard) keep(parent context.Context, lease lock.Lease, sent time.Time) *keeper {
	ttl := g.cfg.leaseTTL
	ctx, cancel := context.WithCancelCause(parent)
	kp := &keeper{ttl: ttl, parent: parent, ctx: ctx, cancel: cancel}
	kp.tl.Lease = lease
	kp.tl.deadline = sent.Add(ttl)
	if d, ok := lease.(lock.Deadliner); ok {
		kp.tl.deadline = d.Deadline()
	}
	kp.lease = &kp.tl
	kp.timer = time.AfterFunc(max(time.Until(kp.tl.deadline)-2*ttl/3, 0), kp.start)
	return kp
}

// start refreshes the lease once, a third of the TTL after the claim, and
// hands it to lock.KeepAlive for the rest of the work.
func (kp *keeper) start() {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.stopped {
		return
	}
	// Detached from the request or the caller: only Stop ends renewal.
	rctx := context.WithoutCancel(kp.parent)
	fctx, cancel := context.WithDeadline(rctx, kp.lease.Deadline())
	err := kp.lease.Refresh(fctx, kp.ttl)
	cancel()
	if errors.Is(err, lock.ErrNotHeld) {
		kp.loseLocked(fmt.Errorf("%w: the first refresh found it no longer held: %w", lock.ErrLeaseLost, err))
		return
	}
	// A transient error is retried by the Keeper until the deadline.
	k, err := lock.KeepAlive(rctx, kp.lease, kp.ttl)
	if err != nil {
		kp.loseLocked(fmt.Errorf("%w: the keep-alive could not start: %w", lock.ErrLeaseLost, err))
		return
	}
	kp.k = k
	context.AfterFunc(k.Context(), func() {
		if cause := context.Cause(k.Context()); !errors.Is(cause, lock.ErrStopped) {
			kp.mu.Lock()
			kp.loseLocked(cause)
			kp.mu.Unlock()
		}
	})
}

// loseLocked records the loss and cancels the work. kp.mu is held.
func (kp *keeper) loseLocked(cause error) {
	if kp.lost == nil {
		kp.lost = cause
	}
	kp.cancel(cause)
}

// Context is the work's context: cancelled when the lease is lost or the
// parent ends.
func (kp *keeper) Context() context.Context { return kp.ctx }

// Lease returns the lease as the Store handed it out.
func (kp *keeper) Lease() lock.Lease { return kp.lease.Lease }

// Stop ends renewal; once it returns no refresh runs or will start, and
// Lost reports whether the lease was lost before.
func (kp *keeper) Stop() {
	kp.mu.Lock()
	kp.stopped = true
	kp.timer.Stop()
	k := kp.k
	kp.mu.Unlock()
	if k != nil {
		k.Stop()
		// A loss the Keeper saw just before Stop is recorded even if its
		// AfterFunc has not run yet.
		if cause := context.Cause(k.Context()); !errors.Is(cause, lock.ErrStopped) {
			kp.mu.Lock()
			kp.loseLocked(cause)
			kp.mu.Unlock()
		}
	}
	kp.cancel(lock.ErrStopped)
}

// Lost returns why the lease was lost while the work ran, or nil.
func (kp *keeper) Lost() error {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	return kp.lost
}

// released reports whether the server confirmed the lease is gone (a
// refresh or the backend reported it not held): only then is a Release
// pointless. A loss seen only by the local clock (no successful refresh
// before the deadline) may leave the key held on the server, so the
// caller still releases it.
func (kp *keeper) released() bool {
	return errors.Is(kp.Lost(), lock.ErrNotHeld)
}

// trackedLease gives lock.KeepAlive the lease's true deadline, counted from
// when the claim was sent, on backends whose leases do not report one.
type trackedLease struct {
	lock.Lease
	mu       sync.Mutex
	deadline time.Time
}

func (t *trackedLease) Refresh(ctx context.Context, ttl time.Duration) error {
	sent := time.Now()
	err := t.Lease.Refresh(ctx, ttl)
	if err == nil {
		d := sent.Add(ttl)
		if dl, ok := t.Lease.(lock.Deadliner); ok {
			d = dl.Deadline()
		}
		t.mu.Lock()
		t.deadline = d
		t.mu.Unlock()
	}
	return err
}

// Deadline implements lock.Deadliner.
func (t *trackedLease) Deadline() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.deadline
}

// Lost implements lock.LossNotifier when the lease does; a nil channel never
// fires.
func (t *trackedLease) Lost() <-chan struct{} {
	if ln, ok := t.Lease.(lock.LossNotifier); ok {
		return ln.Lost()
	}
	return nil
}
