package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
)

func TestAcquireBadInput(t *testing.T) {
	ctx := context.Background()
	if _, err := lock.Acquire(ctx, nil, "k", time.Second); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("nil Locker: %v, want ErrInvalidArgument", err)
	}
	l := memlock.New()
	//lint:ignore SA1012 a nil context is the bad input under test
	if _, err := lock.Acquire(nil, l, "k", time.Second); !errors.Is(err, lock.ErrInvalidArgument) { //nolint:staticcheck
		t.Errorf("nil context: %v, want ErrInvalidArgument", err)
	}
	if _, err := lock.Acquire(ctx, l, "", time.Second); !errors.Is(err, lock.ErrInvalidKey) {
		t.Errorf("empty key: %v, want ErrInvalidKey", err)
	}
	if _, err := lock.Acquire(ctx, l, "k", -time.Second); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("negative TTL: %v, want ErrInvalidTTL", err)
	}
	if _, err := lock.Acquire(ctx, l, "k", time.Second, lock.WithBackoff(0, time.Second)); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("zero backoff: %v, want ErrInvalidArgument", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := lock.Acquire(cancelled, l, "k", time.Second)
	if !errors.Is(err, lock.ErrNotAcquired) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v, want ErrNotAcquired and context.Canceled", err)
	}
	if l.Len() != 0 {
		t.Errorf("a failed Acquire left %d keys held", l.Len())
	}
}

// acquireAfterRelease holds key on l, starts an Acquire, releases, and
// returns how long after the release the waiter held the key.
func acquireAfterRelease(t *testing.T, holder, waiter lock.Locker, opts ...lock.AcquireOption) time.Duration {
	t.Helper()
	ctx := t.Context()
	le, err := holder.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		at  time.Time
		err error
	}
	got := make(chan result, 1)
	go func() {
		w, err := lock.Acquire(ctx, waiter, "k", time.Minute, opts...)
		at := time.Now()
		if err == nil {
			err = w.Release(ctx)
		}
		got <- result{at, err}
	}()
	time.Sleep(30 * time.Millisecond) // let the waiter block; nothing signals that
	released := time.Now()
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil {
		t.Fatalf("Acquire: %v", r.err)
	}
	return r.at.Sub(released)
}

func TestAcquireWakesOnNotification(t *testing.T) {
	l := memlock.New()
	// A huge backoff proves the wake-up came from the release event, not
	// from polling.
	d := acquireAfterRelease(t, l, l, lock.WithBackoff(time.Minute, time.Minute))
	if d > slack {
		t.Errorf("notified waiter took the key %v after the release", d)
	}
}

func TestAcquirePollsWithoutNotifier(t *testing.T) {
	l := memlock.New()
	w := &wrapped{inner: l}
	d := acquireAfterRelease(t, l, w, lock.WithBackoff(time.Millisecond, 20*time.Millisecond))
	if d > 20*time.Millisecond+slack {
		t.Errorf("polling waiter with a 20ms backoff cap took the key %v after the release", d)
	}
}

func TestAcquireFallsBackWhenSubscriptionBreaks(t *testing.T) {
	l := memlock.New()
	d := acquireAfterRelease(t, l, brokenSub{&wrapped{inner: l}}, lock.WithBackoff(time.Millisecond, 20*time.Millisecond))
	if d > 20*time.Millisecond+slack {
		t.Errorf("waiter with a broken subscription took the key %v after the release", d)
	}
}

func TestAcquireWaitIsCappedByHolderTTL(t *testing.T) {
	l := memlock.New()
	ctx := t.Context()
	ttl := 100 * time.Millisecond
	if _, err := l.TryAcquire(ctx, "k", ttl); err != nil {
		t.Fatal(err)
	}
	taken := time.Now()
	// Polling with a one-minute backoff would sleep far past the holder's
	// expiry if the wait were not capped by the reported remaining TTL.
	le, err := lock.Acquire(ctx, &wrapped{inner: l}, "k", time.Minute, lock.WithBackoff(time.Minute, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(taken); d > ttl+slack {
		t.Errorf("Acquire took %v for a key whose holder expired after %v", d, ttl)
	}
	_ = le.Release(ctx)
}

func TestAcquireReturnsBackendErrors(t *testing.T) {
	boom := testError("backend down")
	l := lockerFunc(func(context.Context, string, time.Duration) (lock.Lease, error) { return nil, boom })
	start := time.Now()
	_, err := lock.Acquire(t.Context(), l, "k", time.Second)
	if !errors.Is(err, boom) || errors.Is(err, lock.ErrNotAcquired) {
		t.Errorf("Acquire = %v, want the backend's error, not ErrNotAcquired", err)
	}
	if time.Since(start) > slack {
		t.Errorf("Acquire retried a non-retryable error for %v", time.Since(start))
	}
}

type lockerFunc func(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error)

func (f lockerFunc) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	return f(ctx, key, ttl)
}

func TestWaiterWakesOnRelease(t *testing.T) {
	l := memlock.New()
	holder, err := l.TryAcquire(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	w, err := lock.NewWaiter(t.Context(), l, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	_, held := l.TryAcquire(t.Context(), "k", time.Minute)
	if !errors.Is(held, lock.ErrNotAcquired) {
		t.Fatalf("second take: %v", held)
	}
	woke := make(chan error, 1)
	go func() { woke <- w.Wait(t.Context(), held) }()
	// The holder has a minute left: only the release event can end the
	// wait before the test's deadline.
	if err := holder.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-woke; err != nil {
		t.Fatalf("Wait = %v, want nil after the release", err)
	}
	if _, err := l.TryAcquire(t.Context(), "k", time.Minute); err != nil {
		t.Fatalf("take after the wake-up: %v", err)
	}
}

func TestWaiterEndsWithItsContext(t *testing.T) {
	l := memlock.New()
	if _, err := lock.NewWaiter(t.Context(), l, "k", lock.WithBackoff(0, 0)); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Fatalf("bad backoff: %v", err)
	}
	w, err := lock.NewWaiter(t.Context(), brokenSub{l}, "k", lock.WithBackoff(time.Hour, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := w.Wait(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait on an ended context = %v, want context.Canceled", err)
	}
}
