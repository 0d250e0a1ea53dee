package testenv

import (
	"context"
	"errors"
	"fmt"
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

// LoseReleaseReply is the common scenario of a Release whose reply was
// lost after the server applied it, run against a backend's real server:
// a takes key, faults (a's fault switch) loses the reply of its Release,
// and b takes the key, which must be free. Then a KeepAlive on a's lease
// must end with a loss matching lock.ErrNotHeld, a's Refresh must report
// ErrNotHeld, a retried Release must return nil when retryNil is set and
// ErrNotHeld otherwise (the backend's documented choice), and b's lease
// must be untouched by all of it.
func LoseReleaseReply(t *testing.T, a lock.Locker, faults *FaultSwitch, b lock.Locker, key string, ttl time.Duration, retryNil bool) {
	t.Helper()
	ctx := t.Context()
	le, err := a.TryAcquire(ctx, key, ttl)
	if err != nil {
		t.Fatal(err)
	}
	fired := faults.Fired()
	faults.LoseNextReply()
	err = le.Release(ctx)
	if faults.Fired() != fired+1 {
		t.Fatal("the lost reply hit no request of the Release")
	}
	if err == nil || errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Release with its reply lost: %v, want an error of unknown outcome", err)
	}
	next, err := b.TryAcquire(ctx, key, ttl)
	if err != nil {
		t.Fatalf("the release went through, so the key must be free: %v", err)
	}
	defer func() { _ = next.Release(context.WithoutCancel(ctx)) }()

	k, err := lock.KeepAlive(ctx, le, ttl, lock.WithRefreshInterval(min(100*time.Millisecond, ttl/3)))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-k.Context().Done():
		if cause := context.Cause(k.Context()); !errors.Is(cause, lock.ErrNotHeld) {
			t.Errorf("KeepAlive of the stale lease ended with %v, want a loss matching ErrNotHeld", cause)
		}
	case <-time.After(ttl / 2):
		t.Errorf("KeepAlive of a lease whose key another lease holds is still alive after %v", ttl/2)
	}
	k.Stop()
	if err := le.Refresh(ctx, ttl); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh after the lost release: %v, want ErrNotHeld", err)
	}
	switch err := le.Release(ctx); {
	case retryNil && err != nil:
		t.Errorf("retried Release after the first one released the key: %v, want nil (the documented choice)", err)
	case !retryNil && !errors.Is(err, lock.ErrNotHeld):
		t.Errorf("retried Release after the first one released the key: %v, want ErrNotHeld (the documented choice)", err)
	}
	if err := le.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release after that: %v, want ErrNotHeld", err)
	}
	if err := next.Refresh(ctx, ttl); err != nil {
		t.Errorf("the new holder after the stale lease's calls: %v, want it untouched", err)
	}
}

// ProbeBefore is one TryAcquire of key on l, which another lease holds
// until at least until: a probe answered before until must be refused. A
// probe answered later proves nothing (a loaded machine may have sent it
// late): if it took the key, ProbeBefore releases it and returns how long
// after until it was answered, for the caller to report as inconclusive.
// err describes a probe that took the key too early or failed otherwise.
func ProbeBefore(ctx context.Context, l lock.Locker, key string, until time.Time) (late time.Duration, err error) {
	le, err := l.TryAcquire(ctx, key, time.Minute)
	answered := time.Now()
	if err == nil {
		_ = le.Release(context.WithoutCancel(ctx))
		if answered.Before(until) {
			return 0, fmt.Errorf("TryAcquire(%q) succeeded %v before the holder's TTL could have run out", key, until.Sub(answered))
		}
		return answered.Sub(until), nil
	}
	if !errors.Is(err, lock.ErrNotAcquired) {
		return 0, fmt.Errorf("TryAcquire(%q) on a held key: got %v, want an error matching ErrNotAcquired", key, err)
	}
	return 0, nil
}
