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

func TestNewRunnerReportsBadOptionsOnce(t *testing.T) {
	for name, opts := range map[string][]idempotency.RunnerOption{
		"lease TTL":     {idempotency.WithLeaseTTL(0)},
		"store timeout": {idempotency.WithStoreTimeout(-time.Second)},
		"logger":        {idempotency.WithLogger(nil)},
		"too short":     {idempotency.WithLeaseTTL(time.Nanosecond)},
	} {
		r, err := idempotency.NewRunner(memlock.New(), opts...)
		var oe *idempotency.OptionError
		if r != nil || !errors.Is(err, idempotency.ErrInvalidOption) || !errors.As(err, &oe) {
			t.Errorf("%s: NewRunner = %v, %v; want an *OptionError", name, r, err)
		}
	}
	if _, err := idempotency.NewRunner(nil); !errors.Is(err, idempotency.ErrInvalidOption) {
		t.Errorf("nil store: %v", err)
	}
	if _, err := idempotency.Do(context.Background(), (*idempotency.Runner)(nil), "k", func(context.Context) (int, error) { return 1, nil }); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("nil Runner: %v", err)
	}
	if _, err := idempotency.Once(context.Background(), (*idempotency.Guard)(nil), "k", time.Hour, func(context.Context, time.Time) error { return nil }); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("nil Guard: %v", err)
	}
}

// A Guard's worker calls and a Runner with the same Store and namespace
// share keys: the Guard is its Runner.
func TestGuardRunsOnItsRunner(t *testing.T) {
	store := memlock.New()
	g, err := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }), idempotency.WithNamespace("ns/"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := idempotency.NewRunner(store, idempotency.WithNamespace("ns/"))
	if err != nil {
		t.Fatal(err)
	}
	if g.Runner() == nil || g.Runner().Store() != g.Store() {
		t.Fatal("the Guard's Runner is not on the Guard's Store")
	}
	runs := 0
	fn := func(context.Context) (int, error) { runs++; return 7, nil }
	if v, err := idempotency.Do(context.Background(), g, "job", fn); err != nil || v != 7 {
		t.Fatalf("Do on the Guard: %v %v", v, err)
	}
	var replayed bool
	if v, err := idempotency.Do(context.Background(), r, "job", fn, idempotency.Replayed(&replayed)); err != nil || v != 7 || !replayed || runs != 1 {
		t.Fatalf("Do on the Runner: %v %v replayed %v runs %d", v, err, replayed, runs)
	}
	// Shutting the Guard down shuts its Runner: they are one.
	if err := g.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := idempotency.Do(context.Background(), g.Runner(), "later", fn); !errors.Is(err, idempotency.ErrShutdown) {
		t.Fatalf("Do on the Runner of a shut Guard: %v", err)
	}
	if _, err := idempotency.Do(context.Background(), r, "later", fn); err != nil {
		t.Fatalf("a separate Runner was shut with the Guard: %v", err)
	}
	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := idempotency.Once(context.Background(), r, "cron", time.Hour, func(context.Context, time.Time) error { return nil }); !errors.Is(err, idempotency.ErrShutdown) {
		t.Fatalf("Once after Runner.Shutdown: %v", err)
	}
}
