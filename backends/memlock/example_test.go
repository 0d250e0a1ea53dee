package memlock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
)

func Example() {
	ctx := context.Background()
	l := memlock.New()

	a, _ := l.TryAcquire(ctx, "job", time.Minute)
	_, err := l.TryAcquire(ctx, "job", time.Minute)
	fmt.Println("held:", errors.Is(err, lock.ErrNotAcquired))

	_ = a.Release(ctx)
	b, _ := l.TryAcquire(ctx, "job", time.Minute)
	fmt.Println("tokens:", a.Token(), b.Token())

	// a's lease is gone: its release cannot free b's.
	fmt.Println("stale release:", errors.Is(a.Release(ctx), lock.ErrNotHeld))
	// Output:
	// held: true
	// tokens: 1 2
	// stale release: true
}
