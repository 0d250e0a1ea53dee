package pglock_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/pglock"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Example takes a lock kept in PostgreSQL, does the work under it with the
// lease renewed in the background, and hands the fencing token to the
// protected resource.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@127.0.0.1:5432/app")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	locker, err := pglock.New(pool) // table idemlock_leases, created on first use
	if err != nil {
		log.Fatal(err) // an invalid option
	}
	defer locker.Close() // before pool.Close: stops its LISTEN connection and cleaner

	lease, err := lock.Acquire(ctx, locker, "invoice/42", 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	k, err := lock.KeepAlive(ctx, lease, 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer k.Release(context.WithoutCancel(ctx))
	// Work under k.Context(): it is cancelled if the lease is lost. Writes
	// carry the token; the resource refuses tokens older than one it saw.
	fmt.Println("fencing token", lease.Token())
}

// Example_open makes the backend a configuration value.
func Example_open() {
	b, err := lock.Open(context.Background(), "postgres://app@127.0.0.1:5432/app?idemlock_table=locks&idemlock_schema=infra")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close() // closes the pool Open made
	err = lock.Do(context.Background(), b, "nightly-report", func(ctx context.Context, lease lock.Lease) error {
		return nil // runs on one machine at a time
	}, lock.WithTTL(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
}

// ExampleWithQueue makes a Locker for keys that many workers wait for:
// lock.Acquire waits in a per-key queue, first come, first served, and a
// release wakes only the head.
func ExampleWithQueue() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@127.0.0.1:5432/app")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	hot, err := pglock.New(pool, pglock.WithQueue())
	if err != nil {
		log.Fatal(err)
	}
	defer hot.Close()
	err = lock.Do(ctx, hot, "account/7/ledger", func(ctx context.Context, lease lock.Lease) error {
		return nil // one worker at a time, in the order they began waiting
	})
	if err != nil {
		log.Fatal(err)
	}
}
