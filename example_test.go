package lock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemlock/lock"
	_ "github.com/idemlock/lock/backends/memlock" // registers mem://
)

// Do runs a function while holding a lock, renewing the lease for as long as
// the function runs and releasing it afterwards.
func ExampleDo() {
	ctx := context.Background()
	l, err := lock.Open(ctx, "mem://")
	if err != nil {
		panic(err)
	}
	defer l.Close()

	err = lock.Do(ctx, l, "invoice:42", func(ctx context.Context, lease lock.Lease) error {
		// ctx is cancelled if the lease is lost: stop writing then. The
		// fencing token goes with every write, so that the resource can
		// refuse a holder that lost the lock.
		fmt.Println("sending invoice 42 once with fencing token", lease.Token())
		return nil
	}, lock.WithTTL(5*time.Second))
	fmt.Println("err:", err)
	// Output:
	// sending invoice 42 once with fencing token 1
	// err: <nil>
}

// Acquire waits for a key held by someone else; TryAcquire does not.
func ExampleAcquire() {
	ctx := context.Background()
	l, _ := lock.Open(ctx, "mem://")
	first, _ := l.TryAcquire(ctx, "report", time.Minute)

	_, err := l.TryAcquire(ctx, "report", time.Minute)
	fmt.Println("second TryAcquire:", errors.Is(err, lock.ErrNotAcquired))

	go func() { _ = first.Release(ctx) }() // the holder finishes
	second, err := lock.Acquire(ctx, l, "report", time.Minute)
	fmt.Println("Acquire after release:", err == nil, second.Token() > first.Token())
	_ = second.Release(ctx)
	// Output:
	// second TryAcquire: true
	// Acquire after release: true true
}

// KeepAlive hands out a context that ends when the lease is lost; the
// fencing token goes with every write to the protected resource.
func ExampleKeepAlive() {
	ctx := context.Background()
	l, _ := lock.Open(ctx, "mem://")
	lease, err := l.TryAcquire(ctx, "compactor", 3*time.Second)
	if err != nil {
		fmt.Println("someone else is compacting")
		return
	}
	k, err := lock.KeepAlive(ctx, lease, 3*time.Second)
	if err != nil {
		panic(err)
	}
	defer k.Release(context.WithoutCancel(ctx))

	work := k.Context()
	fmt.Println("working with fencing token", lease.Token(), "lost:", work.Err() != nil)
	// Output: working with fencing token 1 lost: false
}
