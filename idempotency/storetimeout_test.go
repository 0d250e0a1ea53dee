package idempotency_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

// hungStore is a Store whose chosen calls never answer: they block until
// their context ends, as a server that accepts connections and never
// replies. The other calls go to memlock.
type hungStore struct {
	*memlock.Locker
	claim, complete, release bool
	// hangFrom, if positive, makes the claims from the hangFrom-th on hang.
	hangFrom int64
	claims   atomic.Int64
}

type hungLease struct {
	lock.Lease
	s *hungStore
}

func (s *hungStore) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	if n := s.claims.Add(1); s.claim || s.hangFrom > 0 && n >= s.hangFrom {
		<-ctx.Done()
		return nil, nil, ctx.Err()
	}
	le, rec, err := s.Locker.Claim(ctx, key, ttl)
	if le != nil {
		le = &hungLease{le, s}
	}
	return le, rec, err
}

// ClaimFingerprint goes through Claim: memlock's own would bypass it.
func (s *hungStore) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, _ []byte) (lock.Lease, []byte, []byte, error) {
	le, rec, err := s.Claim(ctx, key, ttl)
	return le, rec, nil, err
}

func (s *hungStore) Complete(ctx context.Context, le lock.Lease, rec []byte, ret time.Duration) error {
	if s.complete {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.Locker.Complete(ctx, le.(*hungLease).Lease, rec, ret)
}

func (l *hungLease) Release(ctx context.Context) error {
	if l.s.release {
		<-ctx.Done()
		return ctx.Err()
	}
	return l.Lease.Release(ctx)
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

const hungTimeout = 50 * time.Millisecond

func hungGuard(t *testing.T, s *hungStore, opts ...idempotency.Option) (*idempotency.Guard, *syncBuffer) {
	t.Helper()
	logged := new(syncBuffer)
	g, err := idempotency.New(s, append([]idempotency.Option{idempotency.WithScope(userScope), idempotency.WithStoreTimeout(hungTimeout),
		idempotency.WithLogger(slog.New(slog.NewTextHandler(logged, nil)))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return g, logged
}

// Issue 21.1: a claim the store never answers is bounded by the store
// timeout, not by the request's own context: the request gets 503
// ProblemStoreUnavailable naming the claim, and so does the log.
func TestClaimTimeoutAnswers503(t *testing.T) {
	g, logged := hungGuard(t, &hungStore{Locker: memlock.New(), claim: true})
	h := &counter{}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	w := send(g.Middleware(h), req{key: "k", ctx: ctx})
	if ctx.Err() != nil {
		t.Errorf("the request's own deadline passed before it was answered: the claim was not bounded by the store timeout")
	}
	p := problem(t, w, http.StatusServiceUnavailable, idempotency.ProblemStoreUnavailable)
	if !strings.Contains(p.Detail, "did not answer the claim within "+hungTimeout.String()) {
		t.Errorf("detail %q does not name the claim and the timeout", p.Detail)
	}
	if w.Header().Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After")
	}
	if h.runs.Load() != 0 {
		t.Errorf("the handler ran %d times without a claim", h.runs.Load())
	}
	if l := logged.String(); !strings.Contains(l, "call=claim") || !strings.Contains(l, "timeout="+hungTimeout.String()) {
		t.Errorf("log %q does not name the claim and the timeout", l)
	}
}

// The same for a waiting duplicate (WithWait): its claims after the first
// are bounded too, so it gets 503 naming the claim, not a wait until its
// own deadline.
func TestClaimTimeoutWhileWaiting(t *testing.T) {
	s := &hungStore{Locker: memlock.New(), hangFrom: 3} // the first request's claim, the duplicate's first
	g, _ := hungGuard(t, s)
	g, err := g.With(idempotency.WithWait(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	entered, finish := make(chan struct{}), make(chan struct{})
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-finish
		w.WriteHeader(http.StatusCreated)
	}))
	first := make(chan int)
	go func() { first <- send(m, req{key: "k"}).Code }()
	<-entered
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	p := problem(t, send(m, req{key: "k", ctx: ctx}), http.StatusServiceUnavailable, idempotency.ProblemStoreUnavailable)
	if !strings.Contains(p.Detail, "did not answer the claim") || ctx.Err() != nil {
		t.Errorf("detail %q (request deadline passed: %v), want the claim's timeout before the request's deadline", p.Detail, ctx.Err() != nil)
	}
	close(finish)
	if code := <-first; code != http.StatusCreated {
		t.Errorf("first request: %d", code)
	}
	if n := s.claims.Load(); n < 3 {
		t.Errorf("%d claims, want the duplicate to have claimed again", n)
	}
}

// Do returns a *StoreError naming the claim that timed out.
func TestDoClaimTimeout(t *testing.T) {
	g, _ := hungGuard(t, &hungStore{Locker: memlock.New(), claim: true})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	ran := false
	_, err := idempotency.Do(ctx, g, "job", func(context.Context) (int, error) { ran = true; return 1, nil })
	var se *idempotency.StoreError
	if !errors.As(err, &se) || se.Call != "claim" || se.Timeout != hungTimeout {
		t.Fatalf("Do = %v, want a *StoreError for the claim with Timeout %v", err, hungTimeout)
	}
	if !errors.Is(err, idempotency.ErrStore) || !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil || ran {
		t.Errorf("Do = %v (ran %v): want ErrStore and DeadlineExceeded before the caller's deadline", err, ran)
	}
}

// Complete and Release after the work are bounded as before, and the log
// now names the call that timed out.
func TestCompleteAndReleaseTimeoutsNamed(t *testing.T) {
	for _, tc := range []struct {
		call   string
		status int
		store  *hungStore
	}{
		{"complete", http.StatusCreated, &hungStore{Locker: memlock.New(), complete: true}},
		{"release", http.StatusInternalServerError, &hungStore{Locker: memlock.New(), release: true}},
	} {
		t.Run(tc.call, func(t *testing.T) {
			// A hung Complete is retried in the background for a lease
			// TTL more, which Shutdown waits for.
			g, logged := hungGuard(t, tc.store, idempotency.WithLeaseTTL(4*hungTimeout))
			w := send(g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
			})), req{key: "k"})
			if w.Code != tc.status {
				t.Fatalf("status %d, want the handler's %d", w.Code, tc.status)
			}
			if err := g.Shutdown(t.Context()); err != nil {
				t.Fatal(err)
			}
			if l := logged.String(); !strings.Contains(l, "call="+tc.call) || !strings.Contains(l, "timeout="+hungTimeout.String()) {
				t.Errorf("log %q does not name the %s and the timeout", l, tc.call)
			}
		})
	}
}
