package redislock_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/redis/go-redis/v9"
)

// A Locker on the application's own client: lock.Do waits for the key (woken
// by the holder's release), keeps the lease alive while the function runs,
// and releases it. The fencing token goes with every write to the protected
// resource, which refuses tokens lower than one it has seen.
func Example() {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()
	locker, err := redislock.New(rdb, redislock.WithPrefix("billing:lock:"))
	if err != nil {
		log.Fatal(err) // a nil client or a bad option
	}
	defer locker.Close() // frees the subscription; rdb stays open

	ctx := context.Background()
	err = lock.Do(ctx, locker, "invoice/42", func(ctx context.Context, lease lock.Lease) error {
		// ctx is cancelled the moment the lease is lost.
		return nil
	}, lock.WithTTL(15*time.Second))
	if err != nil {
		log.Print(err)
	}
}

// Cluster and Sentinel work the same way: pass a *redis.ClusterClient or a
// failover client.
func ExampleNew_cluster() {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"10.0.0.1:6379", "10.0.0.2:6379"}})
	defer rdb.Close()
	locker, err := redislock.New(rdb)
	if err != nil {
		log.Fatal(err)
	}
	defer locker.Close()

	ctx := context.Background()
	lease, err := locker.TryAcquire(ctx, "report/daily", time.Minute)
	if err != nil {
		log.Print(err) // errors.Is(err, lock.ErrNotAcquired) when another holds it
		return
	}
	fmt.Println("token", lease.Token())
	_ = lease.Release(ctx)
}

// The backend as a configuration value: the Locker owns the client lock.Open
// made and closes it.
func ExampleNew_url() {
	ctx := context.Background()
	backend, err := lock.Open(ctx, "redis+cluster://10.0.0.1:6379,10.0.0.2:6379?key_prefix=app:")
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	_, _ = lock.Acquire(ctx, backend, "job/rebuild-index", time.Minute)
}
