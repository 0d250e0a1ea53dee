// Every option where it applies: this one compiles.
package main

import (
	"context"
	"net/http"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

func main() {
	ctx := context.Background()
	l := memlock.New()
	le, _ := lock.Acquire(ctx, l, "k", time.Second, lock.WithBackoff(time.Millisecond, time.Second))
	_, _ = lock.KeepAlive(ctx, le, time.Second, lock.WithRefreshInterval(time.Millisecond), lock.WithMaxHold(time.Minute),
		lock.WithAcquiredAt(time.Now()), lock.WithDetached(), lock.WithDeferredStart())
	_ = lock.Do(ctx, l, "k", func(context.Context, lock.Lease) error { return nil },
		lock.WithTTL(time.Second), lock.WithReleaseTimeout(time.Second), lock.WithBackoff(time.Millisecond, time.Second),
		lock.WithRefreshInterval(time.Millisecond), lock.WithMaxHold(time.Minute))
	_, _ = lock.NewWaiter(ctx, l, "k", lock.WithBackoff(time.Millisecond, time.Second))

	shared := []idempotency.SharedOption{idempotency.WithNamespace("n"), idempotency.WithLeaseTTL(time.Second)}
	r, _ := idempotency.NewRunner(l, shared[0], shared[1], idempotency.WithStoreTimeout(time.Second))
	g, _ := idempotency.New(l, shared[0], idempotency.WithHeader("X-Key"), idempotency.WithScope(func(*http.Request) string { return "all" }))
	_, _ = idempotency.Do(ctx, r, "k", func(context.Context) (int, error) { return 1, nil }, idempotency.WithCodec(idempotency.JSON))
	_, _ = idempotency.Do(ctx, g, "k", func(context.Context) (int, error) { return 1, nil })
}
