package testenv

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
)

// RaceLeaseCalls checks, against a backend's real server, that concurrent
// calls on one lease never misreport ownership. Each of rounds takes key
// with l and then
//
//   - runs two Refreshes at once: both must succeed, and other must still
//     be refused the key;
//   - runs Refresh, Release and Refresh at once: the Release must succeed;
//     each Refresh must succeed or report lock.ErrNotHeld, and one that
//     started after the Release returned must report ErrNotHeld; then other
//     must be able to take the key (it is free, not revived or abandoned).
//
// It stops at the first round that goes wrong.
func RaceLeaseCalls(t *testing.T, l, other lock.Locker, key string, ttl time.Duration, rounds int) {
	t.Helper()
	ctx := t.Context()
	for round := range rounds {
		le, err := l.TryAcquire(ctx, key, ttl)
		if err != nil {
			t.Fatalf("round %d: TryAcquire: %v", round, err)
		}
		var errs [2]error
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() { errs[i] = le.Refresh(ctx, ttl) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: Refresh %d of two at once on a held lease: %v, want nil", round, i, err)
			}
		}
		if o, err := other.TryAcquire(ctx, key, ttl); !errors.Is(err, lock.ErrNotAcquired) {
			if o != nil {
				_ = o.Release(ctx)
			}
			t.Fatalf("round %d: another Locker's take after two refreshes: %v, want ErrNotAcquired", round, err)
		}

		var (
			released    time.Time // when Release returned
			relErr      error
			refErrs     [2]error
			refStarted  [2]time.Time
			releaseDone = make(chan struct{})
		)
		var mu sync.Mutex
		wg.Go(func() {
			err := le.Release(ctx)
			mu.Lock()
			relErr, released = err, time.Now()
			mu.Unlock()
			close(releaseDone)
		})
		for i := range refErrs {
			wg.Go(func() {
				if i == 1 {
					// One Refresh of each round starts after the Release
					// returned, one races it.
					if round%2 == 1 {
						<-releaseDone
					}
				}
				started := time.Now()
				err := le.Refresh(ctx, ttl)
				mu.Lock()
				refErrs[i], refStarted[i] = err, started
				mu.Unlock()
			})
		}
		wg.Wait()
		if relErr != nil {
			t.Fatalf("round %d: Release racing two Refreshes: %v, want nil (the lease held its key)", round, relErr)
		}
		for i, err := range refErrs {
			switch {
			case err != nil && !errors.Is(err, lock.ErrNotHeld):
				t.Fatalf("round %d: Refresh racing a Release: %v, want nil or ErrNotHeld", round, err)
			case err == nil && refStarted[i].After(released):
				t.Fatalf("round %d: Refresh that started after Release returned reported success: the lease was revived", round)
			}
		}
		o, err := other.TryAcquire(ctx, key, ttl)
		if err != nil {
			t.Fatalf("round %d: another Locker's take after Release returned nil: %v, want the key free", round, err)
		}
		if err := o.Release(ctx); err != nil {
			t.Fatalf("round %d: releasing the other Locker's lease: %v", round, err)
		}
		if err := le.Refresh(ctx, ttl); !errors.Is(err, lock.ErrNotHeld) {
			t.Fatalf("round %d: Refresh after Release: %v, want ErrNotHeld", round, err)
		}
	}
}
