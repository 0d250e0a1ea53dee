package memcachedlock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
)

// A lock on memcached, through a client the caller owns. It needs a running
// server, so it is compiled but not run.
func Example() {
	ctx := context.Background()
	mc := memcache.New("127.0.0.1:11211")
	defer mc.Close()
	locker, err := memcachedlock.New(mc)
	if err != nil {
		log.Fatal(err) // a nil client or a bad option
	}
	defer locker.Close()

	// Acquire waits for the key (polling: memcached cannot notify).
	lease, err := lock.Acquire(ctx, locker, "report/daily", 30*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	// Pass the fencing token to the resource, which rejects writes with a
	// token lower than one it has seen: memcached may evict a lock early, so
	// the token is what makes the lock safe.
	fmt.Println("writing with token", lease.Token())
	if err := lease.Release(ctx); err != nil {
		log.Fatal(err)
	}

	// lock.Do renews the lease while its function runs and releases it.
	err = lock.Do(ctx, locker, "report/weekly", func(ctx context.Context, lease lock.Lease) error {
		return nil // ctx is cancelled if the lock is lost
	}, lock.WithTTL(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}

	// One attempt, without waiting.
	lease, err = locker.TryAcquire(ctx, "invoice/42", 10*time.Second)
	switch {
	case errors.Is(err, lock.ErrNotAcquired):
		fmt.Println("someone else is on it")
	case err != nil:
		log.Fatal(err)
	default:
		defer lease.Release(ctx)
	}
}

// The URL form, for configuration files.
func Example_open() {
	ctx := context.Background()
	backend, err := lock.Open(ctx, "memcached://10.0.0.1:11211,10.0.0.2:11211/?timeout=1s")
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close() // closes the client Open made
}
