package idempotency_test

// Regression tests from an adversarial review of the background Complete
// (Runner.finish, storing): each one failed before its fix.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

// stallStore is memlock whose Complete does not answer until up is closed
// (a stalled server, or one whose writes are refused while its lease
// renewals still succeed): each attempt lasts until its context ends.
// Refreshes keep succeeding all along.
type stallStore struct {
	*memlock.Locker
	up chan struct{}
}

func (s *stallStore) Complete(ctx context.Context, le lock.Lease, rec []byte, retention time.Duration) error {
	select {
	case <-s.up:
		return s.Locker.Complete(ctx, le, rec, retention)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Complete's retries (within the store timeout in complete, and each
// round of them in finish) run with no renewal of the lease: the Keeper
// is stopped first, and finish renews only between rounds. A lease whose
// remaining time is shorter than the store timeout therefore expires on
// the server while Complete is retried, although every refresh would have
// succeeded; the key is free again, and a retry of the message runs the
// work a second time: the very double run the background Complete exists
// to prevent. Nothing refuses such a configuration at construction.
func TestReviewLeaseExpiresDuringCompleteRetries(t *testing.T) {
	for _, tc := range []struct {
		name         string
		ttl, timeout time.Duration
		work         time.Duration // how long fn runs
	}{
		// As WithLeaseTTL(4*time.Second) with the default 5 s store timeout
		// (a TTL whose renewals a late wake-up cannot outrun).
		{"store timeout longer than the lease TTL", renewTTL, renewTTL * 5 / 4, 0},
		// As WithLeaseTTL(6*time.Second) with the default 5 s store
		// timeout, fn ending shortly before the Keeper's first renewal
		// (due at a third of the TTL): the lease has 0.9 TTL left when
		// Complete starts, less than the store timeout.
		{"work ends before the first renewal", 1200 * time.Millisecond, 1000 * time.Millisecond, 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &stallStore{Locker: memlock.New(), up: make(chan struct{})}
			opts := []idempotency.RunnerOption{idempotency.WithLeaseTTL(tc.ttl), idempotency.WithStoreTimeout(tc.timeout),
				idempotency.WithLogger(slog.New(slog.DiscardHandler))}
			r, err := idempotency.NewRunner(store, opts...)
			if err != nil {
				t.Fatal(err)
			}
			var runs atomic.Int64
			fn := func(ctx context.Context) (int, error) {
				runs.Add(1)
				if tc.work > 0 {
					t.Log("fn works for", tc.work) // the scenario, not synchronisation
					time.Sleep(tc.work)
				}
				return 42, nil
			}
			if _, err := idempotency.Do(t.Context(), r, "msg", fn); !errors.Is(err, idempotency.ErrStore) {
				t.Fatalf("Do with Complete stalled: %v, want a store error (still storing)", err)
			}
			close(store.up) // the store answers Complete again
			if err := r.Shutdown(t.Context()); err != nil {
				t.Fatal(err)
			}
			r2, _ := idempotency.NewRunner(store, opts...)
			v, err := idempotency.Do(t.Context(), r2, "msg", fn)
			if n := runs.Load(); n != 1 || v != 42 || err != nil {
				t.Fatalf("retry after the store came back: %v, %v, fn ran %d times; want 42 replayed, 1 run (the lease expired while Complete was retried without renewal)", v, err, n)
			}
		})
	}
}

// keyStore is memlock that remembers the latest key claimed (the Store
// sees only hashed keys).
type keyStore struct {
	*memlock.Locker
	mu  sync.Mutex
	key string
}

func (s *keyStore) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	s.mu.Lock()
	s.key = key
	s.mu.Unlock()
	return s.Locker.Claim(ctx, key, ttl)
}

func (s *keyStore) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, _ []byte) (lock.Lease, []byte, []byte, error) {
	le, rec, err := s.Claim(ctx, key, ttl)
	return le, rec, nil, err
}

func (s *keyStore) lastKey() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.key
}

// A worker call whose Complete finds the lease lost (fn's result is not
// stored; Do returns a *LeaseLostError) is reported to the observer as a
// plain first run with no error: nothing in the event tells it from a
// stored one. The Guard reports the same edge with the loss as the
// event's error (store1: "the outcome stands; the loss is reported with
// it").
func TestReviewObservedDoLeaseLostReportsNoError(t *testing.T) {
	ev := &events{}
	inner := &keyStore{Locker: memlock.New()}
	r, err := idempotency.NewRunner(lock.ObserveStore(inner, ev), idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = idempotency.Do(t.Context(), r, "job", func(ctx context.Context) (int, error) {
		// An operator (or an expiry) ends the lease while fn runs.
		if err := inner.ForceRelease(ctx, inner.lastKey()); err != nil {
			t.Errorf("force release: %v", err)
		}
		return 1, nil
	})
	var lost *idempotency.LeaseLostError
	if !errors.As(err, &lost) {
		t.Fatalf("Do: %v, want a *LeaseLostError", err)
	}
	if e := ev.last(t); e.Err == nil {
		t.Fatalf("reported %v with no error; want the loss reported with it (the result was not stored)", e.Outcome)
	}
}

// closingStore is memlock whose Complete fails while the store is down,
// and with an error matching lock.ErrClosed once it was closed, as a
// networked backend's calls do after Close (memlock itself keeps serving
// after Close).
type closingStore struct {
	*memlock.Locker
	closed atomic.Bool
}

func (s *closingStore) Complete(ctx context.Context, le lock.Lease, rec []byte, retention time.Duration) error {
	if s.closed.Load() {
		return fmt.Errorf("complete: %w", lock.ErrClosed)
	}
	return errDown
}

// finish retries every error but ErrNotHeld and ErrInvalidArgument, so
// once the backend is closed (lock.ErrClosed: a process closing it after
// a Shutdown whose context ended, as Guard.Shutdown allows) it goes on
// calling the closed Locker for three lease TTLs, and a later Shutdown
// waits all that time for a result that can no longer be stored.
func TestReviewFinishStopsOnClosedStore(t *testing.T) {
	const ttl = time.Second
	store := &closingStore{Locker: memlock.New()}
	r, err := idempotency.NewRunner(store, idempotency.WithLeaseTTL(ttl), idempotency.WithStoreTimeout(100*time.Millisecond),
		idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	// No goroutine outlives the test, whatever it finds.
	t.Cleanup(func() { _ = r.Shutdown(context.Background()) })
	if _, err := idempotency.Do(t.Context(), r, "job", func(context.Context) (int, error) { return 1, nil }); !errors.Is(err, idempotency.ErrStore) {
		t.Fatalf("Do: %v, want a store error (still storing)", err)
	}
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := r.Shutdown(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown while the result is being stored: %v, want it to time out", err)
	}
	store.closed.Store(true)                               // the process closes the backend
	wait, cancel2 := context.WithTimeout(t.Context(), ttl) // a lease TTL: far more than calls to a closed Locker take
	defer cancel2()
	if err := r.Shutdown(wait); err != nil {
		t.Fatalf("Shutdown after the backend was closed: %v; the background Complete keeps calling a closed Locker", err)
	}
}

// flapStore is memlock whose Complete fails until up is closed, and whose
// leases' refreshes fail fast twice in three calls (a flapping
// connection: connection refused, then a call that gets through).
type flapStore struct {
	*memlock.Locker
	up    chan struct{}
	calls atomic.Int64
}

func (s *flapStore) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	le, rec, err := s.Locker.Claim(ctx, key, ttl)
	if le != nil {
		le = flapLease{le, s}
	}
	return le, rec, err
}

func (s *flapStore) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, _ []byte) (lock.Lease, []byte, []byte, error) {
	le, rec, err := s.Claim(ctx, key, ttl)
	return le, rec, nil, err
}

func (s *flapStore) Complete(ctx context.Context, le lock.Lease, rec []byte, retention time.Duration) error {
	select {
	case <-s.up:
		return s.Locker.Complete(ctx, le.(flapLease).Lease, rec, retention)
	default:
		return errDown
	}
}

type flapLease struct {
	lock.Lease
	s *flapStore
}

func (le flapLease) Refresh(ctx context.Context, ttl time.Duration) error {
	if le.s.calls.Add(1)%3 != 0 {
		return errDown
	}
	return le.Lease.Refresh(ctx, ttl)
}

func (le flapLease) Deadline() time.Time { return le.Lease.(lock.Deadliner).Deadline() }

// After a failed renewal, finish sleeps its whole backoff (growing to
// 1-1.5 s) before it tries again, where lock.KeepAlive retries a failed
// refresh within a twelfth of the TTL. With refreshes that fail fast
// intermittently, the lease runs out during that sleep although the next
// refresh would have succeeded; the retry then runs fn again. The Keeper
// keeps the same lease under the same failures while fn runs (checked
// first).
func TestReviewFinishSleepsThroughRenewalAfterFailedRefresh(t *testing.T) {
	const ttl = 1500 * time.Millisecond
	store := &flapStore{Locker: memlock.New(), up: make(chan struct{})}
	opts := []idempotency.RunnerOption{idempotency.WithLeaseTTL(ttl), idempotency.WithStoreTimeout(100 * time.Millisecond),
		idempotency.WithLogger(slog.New(slog.DiscardHandler))}
	r, err := idempotency.NewRunner(store, opts...)
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int64
	fn := func(ctx context.Context) (int, error) {
		if runs.Add(1) == 1 {
			// The first run lasts two lease TTLs (the scenario): the
			// Keeper renews through the same flapping refreshes.
			select {
			case <-ctx.Done():
				t.Errorf("the Keeper lost the lease under the flapping refreshes: %v", context.Cause(ctx))
			case <-time.After(2 * ttl):
			}
		}
		return 42, nil
	}
	if _, err := idempotency.Do(t.Context(), r, "msg", fn); !errors.Is(err, idempotency.ErrStore) {
		t.Fatalf("Do with Complete down: %v, want a store error (still storing)", err)
	}
	// The store's writes stay down for two lease TTLs more (the
	// scenario's length, not a synchronisation), then come back.
	time.Sleep(2 * ttl)
	close(store.up)
	if err := r.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	r2, _ := idempotency.NewRunner(store, opts...)
	v, err := idempotency.Do(t.Context(), r2, "msg", fn)
	if n := runs.Load(); n != 1 || v != 42 || err != nil {
		t.Fatalf("retry after the store came back: %v, %v, fn ran %d times; want 42 replayed, 1 run (the lease ran out while finish slept after a failed refresh)", v, err, n)
	}
}
