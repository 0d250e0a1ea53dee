package etcdlock_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Example takes a lock on an etcd cluster, does the work under it with the
// lease renewed in the background, and hands the fencing token to the
// protected resource.
func Example() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	locker, err := etcdlock.New(cli, etcdlock.WithPrefix("billing/"))
	if err != nil {
		log.Fatal(err) // an invalid option
	}
	defer locker.Close() // before cli.Close: frees pooled leases and watches

	ctx := context.Background()
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
	b, err := lock.Open(context.Background(), "etcd://10.0.0.1:2379,10.0.0.2:2379/?prefix=app/&dial_timeout=2s")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close() // closes the client Open made
	err = lock.Do(context.Background(), b, "nightly-report", func(ctx context.Context, lease lock.Lease) error {
		return nil // runs on one machine at a time
	}, lock.WithTTL(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
}
