package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
)

func TestDoHoldsTheLockDuringFn(t *testing.T) {
	l := memlock.New()
	ran := false
	err := lock.Do(t.Context(), l, "k", func(ctx context.Context) error {
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

func TestDoReturnsFnError(t *testing.T) {
	boom := testError("boom")
	err := lock.Do(t.Context(), memlock.New(), "k", func(context.Context) error { return boom })
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
		_ = lock.Do(t.Context(), l, "k", func(context.Context) error { panic("kaboom") })
	}()
	if l.Len() != 0 {
		t.Errorf("key still held after fn panicked")
	}
}

func TestDoReleasesAfterCancellation(t *testing.T) {
	l := memlock.New()
	ctx, cancel := context.WithCancel(t.Context())
	err := lock.Do(ctx, l, "k", func(ctx context.Context) error {
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
	err := lock.Do(t.Context(), w, "k", func(ctx context.Context) error {
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
		done <- lock.Do(t.Context(), l, "k", func(context.Context) error { close(entered); return nil })
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
	if err := lock.Do(t.Context(), nil, "k", func(context.Context) error { return nil }); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("nil Locker: %v", err)
	}
	if err := lock.Do(t.Context(), l, "k", func(context.Context) error { return nil }, lock.WithTTL(0)); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("zero TTL: %v", err)
	}
	if err := lock.Do(t.Context(), l, "k", func(context.Context) error { return nil }, lock.WithReleaseTimeout(0)); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("zero release timeout: %v", err)
	}
}
