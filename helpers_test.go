package lock_test

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
)

// slack is added to every upper bound on time these tests check, for
// goroutine scheduling on a loaded machine under the race detector (the
// conformance suite's bound, so that both agree on what "at once" means).
const slack = conformance.SchedulingSlack

// healthyTTL is the TTL of the tests whose lease must survive renewal:
// KeepAlive refreshes at a third of it, and the two thirds left outlast the
// scheduling slack twice over. A shorter TTL is lost for real (the
// in-process table lets it expire) whenever a refresh is scheduled late.
const healthyTTL = 3 * slack

// wrapped hides a Locker's optional interfaces (so Acquire must poll) and
// lets a test script what its leases' Refresh does.
type wrapped struct {
	inner     lock.Locker
	refresh   func(ctx context.Context, inner lock.Lease, ttl time.Duration) error
	release   func(ctx context.Context, inner lock.Lease) error
	lost      chan struct{} // non-nil: leases implement lock.LossNotifier
	refreshes atomic.Int64
}

func (w *wrapped) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	le, err := w.inner.TryAcquire(ctx, key, ttl)
	if err != nil {
		return nil, err
	}
	if w.lost != nil {
		return &lossLease{wrappedLease{le, w}}, nil
	}
	return &wrappedLease{le, w}, nil
}

type wrappedLease struct {
	lock.Lease
	w *wrapped
}

func (l *wrappedLease) Refresh(ctx context.Context, ttl time.Duration) error {
	l.w.refreshes.Add(1)
	if l.w.refresh != nil {
		return l.w.refresh(ctx, l.Lease, ttl)
	}
	return l.Lease.Refresh(ctx, ttl)
}

func (l *wrappedLease) Release(ctx context.Context) error {
	if l.w.release != nil {
		return l.w.release(ctx, l.Lease)
	}
	return l.Lease.Release(ctx)
}

// Deadline forwards the inner lease's deadline, so KeepAlive sees the same
// lower bound a backend's lease would report.
func (l *wrappedLease) Deadline() time.Time { return l.Lease.(lock.Deadliner).Deadline() }

type lossLease struct{ wrappedLease }

func (l *lossLease) Lost() <-chan struct{} { return l.w.lost }

// brokenSub is a Notifier whose subscriptions fail on Wait.
type brokenSub struct{ lock.Locker }

func (b brokenSub) Subscribe(context.Context, string) (lock.Subscription, error) {
	return failingSub{}, nil
}

type failingSub struct{}

func (failingSub) Wait(context.Context, *lock.NotAcquiredError) error { return errBroken }
func (failingSub) Close() error                                       { return nil }

type testError string

func (e testError) Error() string { return string(e) }

const errBroken = testError("subscription broke")
