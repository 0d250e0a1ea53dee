package idempotency_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/observe"
)

// holdKey is the context key a holdScoper's StartHold sets.
type holdKey struct{}

// holdScoper is an observe.HoldScoper that counts the holdings it starts
// and ends, and the events with Ends that Observe is handed.
type holdScoper struct {
	mu                   sync.Mutex
	starts, ends, endsTo int
	endKinds             []observe.Kind
}

func (s *holdScoper) Observe(_ context.Context, e observe.Event) {
	if e.Ends {
		s.mu.Lock()
		s.endsTo++
		s.mu.Unlock()
	}
}

func (s *holdScoper) StartHold(ctx context.Context, e observe.Event) (context.Context, func(context.Context, observe.Event)) {
	s.mu.Lock()
	s.starts++
	s.mu.Unlock()
	return context.WithValue(ctx, holdKey{}, e.Token), func(_ context.Context, e observe.Event) {
		s.mu.Lock()
		s.ends++
		s.endKinds = append(s.endKinds, e.Kind)
		s.mu.Unlock()
	}
}

func (s *holdScoper) check(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.starts != 1 || s.ends != 1 || s.endsTo != 0 {
		t.Errorf("%d holdings started, %d ended (%v), %d ending events to Observe; want 1, 1, 0", s.starts, s.ends, s.endKinds, s.endsTo)
	}
}

// TestObservedHold: the Guard's handler and the worker's function run
// with the context the observer's StartHold returned, and the holding
// ends exactly once whatever the work came to: stored (Complete),
// released after an error, or released after a panic.
func TestObservedHold(t *testing.T) {
	errWork := errors.New("work failed")
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, g *idempotency.Guard)
	}{
		{"middleware-stored", func(t *testing.T, g *idempotency.Guard) { serveHold(t, g, http.StatusCreated, false) }},
		{"middleware-released", func(t *testing.T, g *idempotency.Guard) { serveHold(t, g, http.StatusBadGateway, false) }},
		{"middleware-panic", func(t *testing.T, g *idempotency.Guard) { serveHold(t, g, 0, true) }},
		{"worker-stored", func(t *testing.T, g *idempotency.Guard) {
			if _, err := idempotency.Do(t.Context(), g, "k", holdWork(t, nil, false)); err != nil {
				t.Error(err)
			}
		}},
		{"worker-released", func(t *testing.T, g *idempotency.Guard) {
			if _, err := idempotency.Do(t.Context(), g, "k", holdWork(t, errWork, false)); !errors.Is(err, errWork) {
				t.Errorf("Do: %v, want the work's error", err)
			}
		}},
		{"worker-panic", func(t *testing.T, g *idempotency.Guard) {
			defer func() {
				if r := recover(); r != "boom" {
					t.Errorf("recovered %v, want the work's panic", r)
				}
			}()
			_, _ = idempotency.Do(t.Context(), g, "k", holdWork(t, nil, true))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &holdScoper{}
			g, err := idempotency.New(lock.ObserveStore(memlock.New(), s))
			if err != nil {
				t.Fatal(err)
			}
			tc.run(t, g)
			s.check(t)
		})
	}
}

func holdWork(t *testing.T, err error, panics bool) func(context.Context) (int, error) {
	return func(ctx context.Context) (int, error) {
		if tok, _ := idempotency.TokenFromContext(ctx); ctx.Value(holdKey{}) != tok {
			t.Error("the work's context does not derive from the one StartHold returned")
		}
		if panics {
			panic("boom")
		}
		return 1, err
	}
}

func serveHold(t *testing.T, g *idempotency.Guard, status int, panics bool) {
	h := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok, _ := idempotency.TokenFromContext(r.Context()); r.Context().Value(holdKey{}) != tok {
			t.Error("the handler's context does not derive from the one StartHold returned")
		}
		if panics {
			panic("boom")
		}
		w.WriteHeader(status)
	}))
	r := httptest.NewRequest(http.MethodPost, "/pay", nil)
	r.Header.Set("Idempotency-Key", "k")
	defer func() {
		if r := recover(); (r != nil) != panics {
			t.Errorf("recovered %v", r)
		}
	}()
	h.ServeHTTP(httptest.NewRecorder(), r)
}

// plainStore is memlock as a Store whose leases do not report a deadline
// (lock.Deadliner), so that the worker renews its lease before it stores
// the result; it keeps the key it claimed last.
type plainStore struct {
	lock.Store
	key string
}

// plainLease is a lease with nothing but the Lease methods.
type plainLease struct{ lock.Lease }

func (s *plainStore) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	le, rec, err := s.Store.Claim(ctx, key, ttl)
	if le == nil {
		return nil, rec, err
	}
	s.key = key
	return plainLease{le}, rec, err
}

func (s *plainStore) Complete(ctx context.Context, le lock.Lease, rec []byte, retention time.Duration) error {
	if p, ok := le.(plainLease); ok {
		le = p.Lease
	}
	return s.Store.Complete(ctx, le, rec, retention)
}

// TestObservedHoldLostBeforeStore: the lease is gone when the work returns,
// and the renewal before storing the result is what finds it. The holding
// ends there, once, as a loss: no Release or Complete will end it.
func TestObservedHoldLostBeforeStore(t *testing.T) {
	ml := memlock.New()
	st := &plainStore{Store: ml}
	s := &holdScoper{}
	g, err := idempotency.New(lock.ObserveStore(st, s))
	if err != nil {
		t.Fatal(err)
	}
	_, err = idempotency.Do(t.Context(), g, "k", func(ctx context.Context) (int, error) {
		// An operator frees the key while the work runs.
		if err := ml.ForceRelease(ctx, st.key); err != nil {
			t.Error(err)
		}
		return 1, nil
	})
	if !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Do: %v, want an error matching ErrNotHeld", err)
	}
	s.check(t)
	if len(s.endKinds) == 1 && s.endKinds[0] != observe.KindLost {
		t.Errorf("the holding ended with a %v event, want %v", s.endKinds[0], observe.KindLost)
	}
}
