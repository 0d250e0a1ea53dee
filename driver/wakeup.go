package driver

import (
	"context"

	"github.com/idemlock/lock"
)

// Wakeup is the "key may be free" signal of a [lock.Subscription]: one
// slot, so that a Notify before Wait is kept, not missed, and several
// Notifies before one Wait make one wake-up. Make it with [NewWakeup]; its
// methods are safe for concurrent use and never block but Wait.
type Wakeup chan struct{}

// NewWakeup returns a Wakeup with nothing pending.
func NewWakeup() Wakeup { return make(Wakeup, 1) }

// Notify records a wake-up.
func (w Wakeup) Notify() {
	select {
	case w <- struct{}{}:
	default:
	}
}

// Take removes a pending wake-up and reports whether there was one.
func (w Wakeup) Take() bool {
	select {
	case <-w:
		return true
	default:
		return false
	}
}

// Wait returns nil once a wake-up is pending (and removes it), or ctx's
// error when ctx ends first: the body of Subscription.Wait.
func (w Wakeup) Wait(ctx context.Context) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	select {
	case <-w:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
