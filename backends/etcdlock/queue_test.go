package etcdlock_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The whole suite, queue clauses included, through queued Lockers.
func TestConformanceQueued(t *testing.T) {
	conformance.Run(t, conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return newLocker(t, nil, etcdlock.WithQueue()) },
		TTLGranularity: granularity,
		MinTTL:         minTTL,
		ExpirySlack:    expirySlack,
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			return newFaultyLocker(t, etcdlock.WithQueue())
		},
	})
}

// queueLen returns how many entries key's queue holds under prefix.
func queueLen(t *testing.T, cli *clientv3.Client, prefix, key string) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix+"l/"+key+"\xff", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("counting the queue: %v", err)
	}
	return resp.Count
}

// awaitQueueLen polls the queue's length until it is n, failing after d.
func awaitQueueLen(t *testing.T, cli *clientv3.Client, prefix, key string, n int64, d time.Duration) {
	t.Helper()
	testenv.AwaitQueueLen(t, func() int64 { return queueLen(t, cli, prefix, key) }, n, d)
}

// A release wakes only the head: with eight queued waiters (one Locker),
// the requests from the release until the head holds the key are the
// head's take alone, and the take leaves seven entries.
func TestQueueReleaseWakesOnlyHead(t *testing.T) {
	prefix := testPrefix(t)
	var c counter
	holder := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	waiters := newLocker(t, &c, etcdlock.WithPrefix(prefix), etcdlock.WithQueue())
	admin := newClient(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	le, err := holder.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	got := make(chan lock.Lease, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range n {
		wg.Go(func() {
			if l, err := lock.Acquire(ctx, waiters, "k", time.Minute); err == nil {
				got <- l
			}
		})
		awaitQueueLen(t, admin, prefix, "k", int64(i+1), 10*time.Second)
	}
	time.Sleep(100 * time.Millisecond) // let the waiters' watches settle (a watch is no request)
	before := c.method("Txn")
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	var first lock.Lease
	select {
	case first = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no waiter took the key after the release")
	}
	if sent := c.method("Txn") - before; sent != 1 {
		t.Errorf("the waiters sent %d transactions from the release until the head held the key, want 1 (the head's take)", sent)
	}
	if q := queueLen(t, admin, prefix, "k"); q != n-1 {
		t.Errorf("the queue holds %d waiters after the head took the key, want %d", q, n-1)
	}
	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// Waiters of one Locker that arrive at once on a held key join its queue
// without a lease each: of attempts on one key at once at most one can
// take it, so the others need no lease for the take. Before, each took one
// from the Locker's pool of 8: 64 arrivals drained it, granted a lease
// each in line and revoked the surplus afterwards, three requests per
// arrival instead of one.
func TestQueueArrivalsSpareLeasePool(t *testing.T) {
	prefix := testPrefix(t)
	var c counter
	holder := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	waiters := newLocker(t, &c, etcdlock.WithPrefix(prefix), etcdlock.WithQueue())
	admin := newClient(t, nil)
	ctx := t.Context()
	if _, err := holder.TryAcquire(ctx, "k", time.Minute); err != nil {
		t.Fatal(err)
	}
	const n = 64
	start := make(chan struct{})
	errs := make(chan error, n)
	tickets := make(chan lock.Ticket, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			tk, err := waiters.Queue(ctx, "k")
			if err != nil {
				errs <- err
				return
			}
			tickets <- tk
			<-start
			_, err = tk.TryAcquire(ctx, time.Minute)
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(tickets)
	defer func() {
		for tk := range tickets {
			_ = tk.Close()
		}
	}()
	for range n {
		if err := <-errs; !errors.Is(err, lock.ErrNotAcquired) {
			t.Fatalf("a ticket's first take of a held key: %v, want ErrNotAcquired", err)
		}
	}
	if q := queueLen(t, admin, prefix, "k"); q != n {
		t.Fatalf("the queue holds %d waiters after %d refused first takes, want %d", q, n, n)
	}
	// At most one attempt at a time carries a lease: the pool grants the
	// first (in line) and refills once or twice behind it.
	if g := c.method("LeaseGrant"); g > 4 {
		t.Errorf("%d waiters arriving at once on a held key made the Locker grant %d leases, want at most 4 (one per attempt that could take the key)", n, g)
	}
}

// TestQueuedChild is the child process of TestQueueKilledWaiterExpires: a
// waiter that queues on a key and waits until it is killed. Its argument is
// its key prefix.
func TestQueuedChild(t *testing.T) {
	prefix, ok := testenv.ChildArg()
	if !ok {
		return
	}
	l := newLocker(t, nil, etcdlock.WithPrefix(prefix), etcdlock.WithQueue())
	_, err := lock.Acquire(t.Context(), l, "k", time.Minute)
	t.Fatalf("the child's Acquire returned (%v): it should have been killed while waiting", err)
}

// A waiter whose process is killed while queued (SIGKILL: it never leaves)
// loses its entry with its Locker's queue lease: the waiter behind it gets
// the key at most the queue lease's TTL (5 s) after the kill, although the
// holder released long before.
func TestQueueKilledWaiterExpires(t *testing.T) {
	prefix := testPrefix(t)
	admin := newClient(t, nil)
	holder := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	le, err := holder.TryAcquire(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	child := testenv.StartChild(t, "TestQueuedChild", prefix)
	child.Await(t, "queued", func() bool { return queueLen(t, admin, prefix, "k") == 1 })
	waiter := newLocker(t, nil, etcdlock.WithPrefix(prefix), etcdlock.WithQueue())
	behind := testenv.StartBehind(t, waiter, "k")
	awaitQueueLen(t, admin, prefix, "k", 2, 10*time.Second)
	child.Kill(t)
	killed := time.Now()
	if err := le.Release(t.Context()); err != nil { // the dead head is ahead
		t.Fatal(err)
	}
	// The dead lease expires queueLeaseTTL (5 s) after its last keep-alive;
	// the waiter sees its entry go in the same event.
	bound := 5*time.Second + 2*time.Second + 6*conformance.SchedulingSlack
	behind.AwaitKey(t, killed, "the kill", bound)
	if q := queueLen(t, admin, prefix, "k"); q != 0 {
		t.Errorf("the queue still holds %d entries", q)
	}
}

// The outcomes of joining and leaving the queue. A queued take whose reply
// was lost may have put the entry: Acquire returns the error and the
// ticket's Close deletes it. A leave that cannot be sent (the client is
// closed) leaves the entry to expire with the queue lease, which the Locker
// stops renewing.
func TestQueueUnknownOutcomes(t *testing.T) {
	prefix := testPrefix(t)
	admin := newClient(t, nil)
	holder := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	if _, err := holder.TryAcquire(t.Context(), "k", time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Run("take reply lost", func(t *testing.T) {
		l, faults := newFaultyLocker(t, etcdlock.WithPrefix(prefix), etcdlock.WithQueue())
		// Queue once first, so that the queue lease and its keep-alive
		// stream (clientv3's own, not a lock operation) exist before the
		// fault is armed.
		warm, err := l.Queue(t.Context(), "k")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := warm.TryAcquire(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
			t.Fatalf("a ticket's take of a held key: %v, want ErrNotAcquired", err)
		}
		if err := warm.Close(); err != nil {
			t.Fatal(err)
		}
		faults.LoseNextReply()
		_, err = lock.Acquire(t.Context(), l, "k", time.Minute)
		if err == nil || errors.Is(err, lock.ErrNotAcquired) {
			t.Fatalf("Acquire whose queued take lost its reply: %v, want an error of unknown outcome", err)
		}
		if q := queueLen(t, admin, prefix, "k"); q != 0 {
			t.Errorf("the queue holds %d waiters after Acquire gave up, want 0 (the ticket leaves)", q)
		}
	})
	t.Run("leave not sent", func(t *testing.T) {
		cli := newClient(t, nil)
		l, err := etcdlock.New(cli, etcdlock.WithPrefix(prefix), etcdlock.WithQueue())
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		tk, err := l.Queue(t.Context(), "k")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tk.TryAcquire(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
			t.Fatalf("a ticket's take of a held key: %v, want ErrNotAcquired", err)
		}
		if q := queueLen(t, admin, prefix, "k"); q != 1 {
			t.Fatalf("the queue holds %d waiters after a refused ticket take, want 1", q)
		}
		_ = cli.Close()
		if err := tk.Close(); err == nil {
			t.Error("Close whose leave could not be sent returned nil, want the error")
		}
		awaitQueueLen(t, admin, prefix, "k", 0, 5*time.Second+3*time.Second)
	})
}
