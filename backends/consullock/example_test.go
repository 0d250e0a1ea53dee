package consullock_test

import (
	"context"
	"log"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/consullock"
)

// A lock on Consul, held by a session that KeepAlive renews, released when
// the work is done.
func Example() {
	client, err := api.NewClient(api.DefaultConfig()) // CONSUL_HTTP_ADDR, or 127.0.0.1:8500
	if err != nil {
		log.Fatal(err)
	}
	locker, err := consullock.New(client) // sessions of at least 10s, Consul's default minimum
	if err != nil {
		log.Fatal(err)
	}
	defer locker.Close()

	ctx := context.Background()
	err = lock.Do(ctx, locker, "reports/daily", func(ctx context.Context, lease lock.Lease) error {
		// ctx is cancelled if the lock is lost; pass lease.Token(), the fencing token,
		// to the resource as well.
		return nil
	}, lock.WithTTL(15*time.Second))
	if err != nil {
		log.Print(err)
	}
}

// The same Locker from a URL, as configuration would give it.
func Example_open() {
	b, err := lock.Open(context.Background(), "consul://127.0.0.1:8500/?prefix=myapp/locks/&min_ttl=10s")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	le, err := lock.Acquire(context.Background(), b, "orders/42", 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer le.Release(context.Background())
	log.Printf("holding %s with fencing token %d", le.Key(), le.Token())
}

// Waiters of a hot key served first come, first served: a release wakes
// only the waiter at the head of the queue.
func ExampleWithQueue() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	locker, err := consullock.New(client, consullock.WithQueue())
	if err != nil {
		log.Fatal(err)
	}
	defer locker.Close()
	le, err := lock.Acquire(context.Background(), locker, "jobs/hot", 10*time.Second) // queued while held
	if err != nil {
		log.Fatal(err)
	}
	defer le.Release(context.Background())
}
