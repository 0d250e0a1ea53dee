package testenv

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
)

// LossDetection measures, on a backend's real server, how long after a
// lock key is deleted by hand (lock.Admin.ForceRelease, which is exactly
// that) the holder's lock.KeepAlive context is cancelled, and fails unless
// it is within bound. The holder takes key with l for ttl and keeps it
// alive with the default refresh interval (a third of ttl); the key is
// deleted right after a refresh succeeded, the worst moment for a backend
// that learns of the loss only from its next refresh. It returns the
// measured time, from ForceRelease returning to the cancellation.
func LossDetection(t *testing.T, l lock.Locker, key string, ttl, bound time.Duration) time.Duration {
	t.Helper()
	ctx := t.Context()
	admin, ok := l.(lock.Admin)
	if !ok {
		t.Fatalf("%T is not a lock.Admin", l)
	}
	le, err := l.TryAcquire(ctx, key, ttl)
	if err != nil {
		t.Fatalf("TryAcquire: %v", err)
	}
	if _, ok := le.(lock.Deadliner); !ok {
		t.Fatalf("the lease %T is not a lock.Deadliner", le)
	}
	w := &watchedLease{Lease: le, refreshed: make(chan struct{}, 1)}
	var held lock.Lease = w
	if _, ok := le.(lock.LossNotifier); ok {
		held = &watchedNotifier{w}
	}
	k, err := lock.KeepAlive(ctx, held, ttl)
	if err != nil {
		t.Fatalf("KeepAlive: %v", err)
	}
	defer k.Stop()
	select {
	case <-w.refreshed:
	case <-k.Context().Done():
		t.Fatalf("the lease was lost before its first refresh: %v", context.Cause(k.Context()))
	}
	if err := admin.ForceRelease(ctx, key); err != nil {
		t.Fatalf("ForceRelease: %v", err)
	}
	deleted := time.Now()
	select {
	case <-k.Context().Done():
	case <-time.After(bound + time.Minute):
	}
	took := time.Since(deleted)
	if cause := context.Cause(k.Context()); !errors.Is(cause, lock.ErrLeaseLost) {
		t.Fatalf("%v after ForceRelease the keeper's context ended with %v, want a cause matching lock.ErrLeaseLost", took, cause)
	}
	t.Logf("loss detected %v after the key was deleted (TTL %v, refresh every %v, bound %v)", took, ttl, ttl/3, bound)
	if took > bound {
		t.Errorf("loss detected %v after the key was deleted, want at most %v", took, bound)
	}
	return took
}

// watchedLease reports each successful Refresh.
type watchedLease struct {
	lock.Lease
	refreshed chan struct{}
}

func (w *watchedLease) Refresh(ctx context.Context, ttl time.Duration) error {
	err := w.Lease.Refresh(ctx, ttl)
	if err == nil {
		select {
		case w.refreshed <- struct{}{}:
		default:
		}
	}
	return err
}

// Deadline forwards the lease's own loss deadline to KeepAlive.
func (w *watchedLease) Deadline() time.Time { return w.Lease.(lock.Deadliner).Deadline() }

// watchedNotifier is a watchedLease of a lease that is a lock.LossNotifier.
type watchedNotifier struct{ *watchedLease }

func (w *watchedNotifier) Lost() <-chan struct{} {
	return w.Lease.(lock.LossNotifier).Lost()
}
