package idempotency_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

// blindStore is memlock with the holder's remaining time taken out of
// its "held" errors: a Store that cannot tell.
type blindStore struct{ *memlock.Locker }

func (s blindStore) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	le, rec, err := s.Locker.Claim(ctx, key, ttl)
	if errors.Is(err, lock.ErrNotAcquired) {
		err = lock.ErrNotAcquired
	}
	return le, rec, err
}

// ClaimFingerprint goes through Claim: memlock's own would bypass it.
func (s blindStore) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, _ []byte) (lock.Lease, []byte, []byte, error) {
	le, rec, err := s.Claim(ctx, key, ttl)
	return le, rec, nil, err
}

// Issue 21.7: a duplicate in flight is told the holder's remaining lease
// time (rounded up to whole seconds), capped by WithMaxRetryAfter; a Store
// that cannot tell keeps WithRetryAfter's delay.
func TestRetryAfterFromHoldersRemainingTime(t *testing.T) {
	for _, tc := range []struct {
		name  string
		store idempotency.Store
		opts  []idempotency.Option
		want  string        // Retry-After
		min   time.Duration // InProgressError.RetryAfter at least
		max   time.Duration // and at most
	}{
		{"remaining", memlock.New(), []idempotency.Option{idempotency.WithLeaseTTL(9 * time.Second)}, "9", 8 * time.Second, 9 * time.Second},
		{"capped", memlock.New(), []idempotency.Option{idempotency.WithLeaseTTL(time.Minute)}, "10", 10 * time.Second, 10 * time.Second},
		{"own cap", memlock.New(), []idempotency.Option{idempotency.WithLeaseTTL(time.Minute), idempotency.WithMaxRetryAfter(30 * time.Second)}, "30", 30 * time.Second, 30 * time.Second},
		{"cannot tell", blindStore{memlock.New()}, []idempotency.Option{idempotency.WithLeaseTTL(9 * time.Second)}, "1", time.Second, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := idempotency.New(tc.store, append([]idempotency.Option{idempotency.WithScope(userScope)}, tc.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			b := newBlocking()
			m := g.Middleware(b)
			done := make(chan struct{})
			go func() { defer close(done); send(m, req{key: "k"}) }()
			<-b.started
			w := send(m, req{key: "k"})
			problem(t, w, http.StatusConflict, idempotency.ProblemInProgress)
			if got := w.Header().Get("Retry-After"); got != tc.want {
				t.Errorf("Retry-After %q, want %q", got, tc.want)
			}
			// The worker's side: the same delay.
			started, proceed := make(chan struct{}), make(chan struct{})
			wdone := make(chan struct{})
			go func() {
				defer close(wdone)
				_, _ = idempotency.Do(t.Context(), g, "job", func(context.Context) (int, error) { close(started); <-proceed; return 1, nil })
			}()
			<-started
			_, err = idempotency.Do(t.Context(), g, "job", func(context.Context) (int, error) { return 2, nil })
			var ip *idempotency.InProgressError
			if !errors.As(err, &ip) || ip.RetryAfter < tc.min || ip.RetryAfter > tc.max {
				t.Errorf("Do = %v, want an InProgressError with RetryAfter in [%v, %v]", err, tc.min, tc.max)
			}
			close(proceed)
			close(b.proceed)
			<-wdone
			<-done
		})
	}
}
