package idempotency_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

// limitedStore is memlock reporting a server's TTL limits, as Consul's
// 10 s minimum session TTL and memcached's 30-day maximum.
type limitedStore struct {
	*memlock.Locker
	lim lock.TTLLimits
}

func (s limitedStore) TTLLimits() lock.TTLLimits { return s.lim }

// Issue 21.6: a lease TTL the backend cannot honour is refused by New
// (and With), with an error that names the fix, instead of a 503 on every
// request later.
func TestTTLCheckedAtConstruction(t *testing.T) {
	store := limitedStore{memlock.New(), lock.TTLLimits{Min: 10 * time.Second, Max: 30 * 24 * time.Hour, Step: time.Second}}
	scope := idempotency.WithScope(func(*http.Request) string { return "all" })

	_, err := idempotency.New(store, scope, idempotency.WithLeaseTTL(2*time.Second))
	var oe *idempotency.OptionError
	var te *lock.TTLError
	if !errors.Is(err, idempotency.ErrInvalidOption) || !errors.Is(err, lock.ErrInvalidTTL) ||
		!errors.As(err, &oe) || oe.Option != "WithLeaseTTL" || !errors.As(err, &te) || te.TTL != 2*time.Second {
		t.Fatalf("New with a 2 s lease TTL on a 10 s minimum = %v, want an *OptionError for WithLeaseTTL wrapping a *lock.TTLError", err)
	}
	if !strings.Contains(err.Error(), "use at least 10s") {
		t.Errorf("error %q does not name the fix", err)
	}

	_, err = idempotency.New(store, scope, idempotency.WithRetention(365*24*time.Hour))
	if !errors.Is(err, lock.ErrInvalidTTL) || !errors.As(err, &oe) || oe.Option != "WithRetention" || !strings.Contains(err.Error(), "use at most") {
		t.Fatalf("New with a year's retention on a 30-day maximum = %v, want an error for WithRetention", err)
	}

	g, err := idempotency.New(store, scope) // the defaults fit
	if err != nil {
		t.Fatalf("New with the defaults: %v", err)
	}
	if _, err := g.With(idempotency.WithLeaseTTL(time.Second)); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("With(WithLeaseTTL(1s)) = %v, want an error matching lock.ErrInvalidTTL", err)
	}
	if _, err := g.With(idempotency.WithLeaseTTL(15 * time.Second)); err != nil {
		t.Errorf("With(WithLeaseTTL(15s)) = %v", err)
	}
	// A Store without limits takes any positive TTL.
	if _, err := idempotency.New(memlock.New(), scope, idempotency.WithLeaseTTL(time.Millisecond)); err != nil {
		t.Errorf("New on a Store without limits: %v", err)
	}
}
