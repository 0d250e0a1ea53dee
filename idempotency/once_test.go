package idempotency_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
)

// instances returns n Guards on one Store, as n processes would have.
func instances(t *testing.T, store idempotency.Store, n int, opts ...idempotency.Option) []*idempotency.Guard {
	t.Helper()
	gs := make([]*idempotency.Guard, n)
	for i := range gs {
		g, err := idempotency.New(store, append([]idempotency.Option{idempotency.WithScope(func(*http.Request) string { return "jobs" }),
			idempotency.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		gs[i] = g
	}
	return gs
}

// onceRace has every instance call Once for key at the same time, twice,
// and returns how many calls ran fn.
func onceRace(t *testing.T, gs []*idempotency.Guard, key string, period time.Duration) int {
	t.Helper()
	var mu sync.Mutex
	runs := 0
	for round := range 2 {
		var wg sync.WaitGroup
		for _, g := range gs {
			wg.Go(func() {
				ran, err := idempotency.Once(t.Context(), g, key, period, func(ctx context.Context, start time.Time) error {
					mu.Lock()
					runs++
					mu.Unlock()
					if !start.Equal(start.Truncate(period)) || start.After(time.Now()) {
						t.Errorf("fn got period start %v, not the current period's", start)
					}
					if tok, ok := idempotency.TokenFromContext(ctx); !ok || tok == 0 {
						t.Errorf("no fencing token in fn's context")
					}
					return nil
				})
				switch {
				case errors.Is(err, idempotency.ErrInProgress) && round == 0:
				case err != nil:
					t.Errorf("Once: %v", err)
				case ran && round == 1:
					t.Errorf("ran again in the second round, in the same period")
				}
			})
		}
		wg.Wait()
	}
	return runs
}

// Issue 21.5: Once over several instances on one store runs the job
// once per period.
func TestOnceAcrossInstances(t *testing.T) {
	gs := instances(t, memlock.New(), 4)
	if n := onceRace(t, gs, "nightly-report", 24*time.Hour); n != 1 {
		t.Fatalf("fn ran %d times in one period over 4 instances, want once", n)
	}
}

// Across period boundaries: every period runs at most once, and a new
// period runs again.
func TestOncePerPeriod(t *testing.T) {
	gs := instances(t, memlock.New(), 3)
	// Once keeps a period's record for a period past its end (at most a
	// minute): an instance that read the clock in a period and claims it
	// later than that runs it again, as one whose clock lags would. The
	// period is long enough that no late wake-up of a loaded machine does.
	const period = 2 * conformance.SchedulingSlack
	var mu sync.Mutex
	perStart := map[time.Time]int{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, g := range gs {
		wg.Go(func() {
			tick := time.NewTicker(5 * time.Millisecond) // the instance's schedule
			defer tick.Stop()
			for {
				select {
				case <-done:
					return
				case <-tick.C:
				}
				_, err := idempotency.Once(t.Context(), g, "compact", period, func(ctx context.Context, start time.Time) error {
					mu.Lock()
					perStart[start]++
					if len(perStart) == 3 {
						select {
						case <-done:
						default:
							close(done)
						}
					}
					mu.Unlock()
					return nil
				})
				if err != nil && !errors.Is(err, idempotency.ErrInProgress) {
					t.Errorf("Once: %v", err)
				}
			}
		})
	}
	wg.Wait()
	for start, n := range perStart {
		if n != 1 {
			t.Errorf("period %v ran %d times", start, n)
		}
	}
}

// A failed run releases the period: the next call runs again. A Permanent
// error is kept: later calls get it and do not run.
func TestOnceFailureAndPermanent(t *testing.T) {
	g := instances(t, memlock.New(), 1)[0]
	boom := errors.New("boom")
	ran, err := idempotency.Once(t.Context(), g, "a", time.Hour, func(context.Context, time.Time) error { return boom })
	if !ran || !errors.Is(err, boom) {
		t.Fatalf("first = %v, %v", ran, err)
	}
	ran, err = idempotency.Once(t.Context(), g, "a", time.Hour, func(context.Context, time.Time) error { return idempotency.Permanent(boom) })
	if !ran || !errors.Is(err, boom) {
		t.Fatalf("after a failure, the next call must run: %v, %v", ran, err)
	}
	ran, err = idempotency.Once(t.Context(), g, "a", time.Hour, func(context.Context, time.Time) error { t.Error("ran"); return nil })
	var se *idempotency.StoredError
	if ran || !errors.As(err, &se) || !errors.Is(err, boom) {
		t.Fatalf("after a Permanent error = %v, %v, want the stored error", ran, err)
	}
	if _, err := idempotency.Once(t.Context(), g, "a", 0, func(context.Context, time.Time) error { return nil }); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("period 0: %v", err)
	}
}

// A day's record outlives a backend whose records live 24 h at most:
// Once keeps it as long as the backend allows, and refuses a period that
// ends later than that.
func TestOnceWithinBackendMaximum(t *testing.T) {
	store := limitedStore{memlock.New(), lock.TTLLimits{Max: 24 * time.Hour}}
	g := instances(t, store, 1)[0]
	if ran, err := idempotency.Once(t.Context(), g, "daily", 24*time.Hour, func(context.Context, time.Time) error { return nil }); !ran || err != nil {
		t.Fatalf("a day on a 24 h maximum: %v, %v", ran, err)
	}
	// A period whose end is more than a day away.
	period := 7 * 24 * time.Hour
	for now := time.Now(); now.Truncate(period).Add(period).Sub(now) < 25*time.Hour; period *= 2 {
	}
	ran, err := idempotency.Once(t.Context(), g, "weekly", period, func(context.Context, time.Time) error { return nil })
	if ran || !errors.Is(err, lock.ErrInvalidTTL) {
		t.Fatalf("a %v period on a 24 h maximum: %v, %v, want an error matching lock.ErrInvalidTTL", period, ran, err)
	}
}
