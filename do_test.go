package lock_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
)

func TestDoHoldsTheLockDuringFn(t *testing.T) {
	l := memlock.New()
	ran := false
	err := lock.Do(t.Context(), l, "k", func(ctx context.Context, lease lock.Lease) error {
		ran = true
		if _, err := l.TryAcquire(ctx, "k", time.Second); !errors.Is(err, lock.ErrNotAcquired) {
			t.Errorf("key not held inside Do: %v", err)
		}
		return nil
	})
	if err != nil || !ran {
		t.Fatalf("Do = %v, ran = %v", err, ran)
	}
	if l.Len() != 0 {
		t.Errorf("key still held after Do returned")
	}
}

// TestDoPassesTheLease: fn gets the lease Do holds, so the fencing token
// is at hand, and the lease is released once fn returned.
func TestDoPassesTheLease(t *testing.T) {
	l := memlock.New()
	before, err := l.TryAcquire(t.Context(), "k", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := before.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	var got lock.Lease
	err = lock.Do(t.Context(), l, "k", func(ctx context.Context, lease lock.Lease) error {
		got = lease
		if lease == nil {
			return errors.New("nil lease")
		}
		if lease.Key() != "k" || lease.Token() <= before.Token() {
			t.Errorf("fn got lease %q token %d, want key k and a token above %d", lease.Key(), lease.Token(), before.Token())
		}
		return lease.Refresh(ctx, time.Second) // the lease fn got holds the key
	})
	if err != nil {
		t.Fatalf("Do = %v", err)
	}
	if err := got.Refresh(t.Context(), time.Second); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh of fn's lease after Do = %v, want ErrNotHeld: Do releases it", err)
	}
}

func TestDoReturnsFnError(t *testing.T) {
	boom := testError("boom")
	err := lock.Do(t.Context(), memlock.New(), "k", func(context.Context, lock.Lease) error { return boom })
	if !errors.Is(err, boom) {
		t.Errorf("Do = %v, want fn's error", err)
	}
}

func TestDoReleasesAfterPanic(t *testing.T) {
	l := memlock.New()
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Errorf("recovered %v, want the fn's panic to continue", r)
			}
		}()
		_ = lock.Do(t.Context(), l, "k", func(context.Context, lock.Lease) error { panic("kaboom") })
	}()
	if l.Len() != 0 {
		t.Errorf("key still held after fn panicked")
	}
}

func TestDoReleasesAfterCancellation(t *testing.T) {
	l := memlock.New()
	ctx, cancel := context.WithCancel(t.Context())
	err := lock.Do(ctx, l, "k", func(ctx context.Context, lease lock.Lease) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Do = %v, want context.Canceled", err)
	}
	if l.Len() != 0 {
		t.Errorf("key still held after Do's context was cancelled: the release must use a fresh context")
	}
}

func TestDoReportsLoss(t *testing.T) {
	w := &wrapped{inner: memlock.New(), refresh: func(context.Context, lock.Lease, time.Duration) error {
		return lock.ErrNotHeld
	}}
	err := lock.Do(t.Context(), w, "k", func(ctx context.Context, lease lock.Lease) error {
		<-ctx.Done() // the lease is lost at its first refresh
		return nil
	}, lock.WithTTL(30*time.Millisecond))
	if !errors.Is(err, lock.ErrLeaseLost) {
		t.Errorf("Do = %v, want ErrLeaseLost although fn returned nil", err)
	}
}

func TestDoWaitsForTheKey(t *testing.T) {
	l := memlock.New()
	le, err := l.TryAcquire(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- lock.Do(t.Context(), l, "k", func(context.Context, lock.Lease) error { close(entered); return nil })
	}()
	select {
	case <-entered:
		t.Fatal("Do ran fn while another lease held the key")
	case <-time.After(30 * time.Millisecond): // absence can only be observed over time
	}
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestDoBadInput(t *testing.T) {
	l := memlock.New()
	if err := lock.Do(t.Context(), l, "k", nil); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("nil fn: %v", err)
	}
	if err := lock.Do(t.Context(), nil, "k", func(context.Context, lock.Lease) error { return nil }); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("nil Locker: %v", err)
	}
	if err := lock.Do(t.Context(), l, "k", func(context.Context, lock.Lease) error { return nil }, lock.WithTTL(0)); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("zero TTL: %v", err)
	}
	if err := lock.Do(t.Context(), l, "k", func(context.Context, lock.Lease) error { return nil }, lock.WithReleaseTimeout(0)); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("zero release timeout: %v", err)
	}
}

// lateExpiry is a Locker whose server keeps a key longer than the client's
// lower bound of the lease says (as Consul keeps a session up to twice its
// TTL): its leases report a deadline of ttl from the take but hold the key
// for ten times that, and their renewals fail without an answer.
type lateExpiry struct {
	inner    *memlock.Locker
	releases atomic.Int64
}

func (l *lateExpiry) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	sent := time.Now()
	le, err := l.inner.TryAcquire(ctx, key, 10*ttl)
	if err != nil {
		return nil, err
	}
	return &lateLease{Lease: le, l: l, deadline: sent.Add(ttl)}, nil
}

type lateLease struct {
	lock.Lease
	l        *lateExpiry
	deadline time.Time
}

func (le *lateLease) Deadline() time.Time { return le.deadline }

func (le *lateLease) Refresh(context.Context, time.Duration) error {
	return testError("i/o timeout") // the outcome is unknown: not ErrNotHeld
}

func (le *lateLease) Release(ctx context.Context) error {
	le.l.releases.Add(1)
	return le.Lease.Release(ctx)
}

// TestDoReleasesAfterLocalDeadline is the regression test of issue 13,
// finding 5: a lease lost only because no renewal succeeded before its
// local deadline may still be held by the server, so Do must release it.
func TestDoReleasesAfterLocalDeadline(t *testing.T) {
	l := &lateExpiry{inner: memlock.New()}
	err := lock.Do(t.Context(), l, "k", func(ctx context.Context, lease lock.Lease) error {
		<-ctx.Done() // lost at the local deadline
		return nil
	}, lock.WithTTL(60*time.Millisecond))
	if !errors.Is(err, lock.ErrLeaseLost) {
		t.Errorf("Do = %v, want ErrLeaseLost", err)
	}
	if n := l.releases.Load(); n != 1 {
		t.Errorf("Do released %d times after a loss by the local deadline, want once", n)
	}
	if l.inner.Len() != 0 {
		t.Errorf("the server still holds the key after Do returned: a lease lost only by its local deadline was not released")
	}
}

// TestDoSkipsReleaseAfterReportedLoss checks the other side: when the
// backend reported the loss (ErrNotHeld), Do does not release again.
func TestDoSkipsReleaseAfterReportedLoss(t *testing.T) {
	var releases atomic.Int64
	w := &wrapped{inner: memlock.New(), refresh: func(context.Context, lock.Lease, time.Duration) error {
		return lock.ErrNotHeld
	}}
	w.release = func(ctx context.Context, inner lock.Lease) error {
		releases.Add(1)
		return inner.Release(ctx)
	}
	err := lock.Do(t.Context(), w, "k", func(ctx context.Context, lease lock.Lease) error {
		<-ctx.Done()
		return nil
	}, lock.WithTTL(60*time.Millisecond))
	if !errors.Is(err, lock.ErrLeaseLost) || !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Do = %v, want ErrLeaseLost and ErrNotHeld", err)
	}
	if n := releases.Load(); n != 0 {
		t.Errorf("Do released %d times after the backend reported the loss, want none", n)
	}
}
