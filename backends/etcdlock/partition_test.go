package etcdlock_test

import (
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/internal/faults"
	"github.com/idemlock/lock/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// A holder cut off from etcd loses its lease at its local deadline. The
// torture harness found KeepAlive blocked for as long as a partition
// lasted: the lease's Lost opened its watch while holding the lease's
// mutex, and Watch waits until the watch stream is set up, so the holder's
// context stayed live seconds after another holder took the key. Lost and
// KeepAlive must return at once, and the context must end by the deadline.
func TestKeepAliveUnderPartitionLosesAtDeadline(t *testing.T) {
	tp := faults.Start(t, testenv.Etcd)
	n := tp.Net(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: n.Addrs(tp.Addrs()), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("clientv3.New: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	l := mustNew(t, cli)
	t.Cleanup(func() { _ = l.Close() })

	const ttl = 2 * time.Second
	le, err := l.TryAcquire(t.Context(), "partitioned", ttl)
	if err != nil {
		t.Fatal(err)
	}
	deadline := le.(lock.Deadliner).Deadline()
	n.BlackHole(t, faults.Both)

	returned := make(chan *lock.Keeper, 1)
	go func() {
		k, err := lock.KeepAlive(t.Context(), le, ttl)
		if err != nil {
			t.Error(err)
		}
		returned <- k
	}()
	var k *lock.Keeper
	select {
	case k = <-returned:
	case <-time.After(ttl):
		t.Fatalf("KeepAlive did not return within the TTL %v while the client was cut off", ttl)
	}
	if k == nil {
		return
	}
	defer k.Stop()
	select {
	case <-k.Context().Done():
		if !k.Lost() {
			t.Errorf("context ended with %v, want a loss", k.Err())
		}
	case <-time.After(time.Until(deadline) + time.Second): // the timer's own lateness, on a loaded machine
		t.Fatalf("context still live a second after the lease's deadline %v", deadline)
	}
}
