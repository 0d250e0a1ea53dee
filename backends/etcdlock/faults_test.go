package etcdlock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/leakcheck"
	"github.com/idemlock/lock/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// privateClient returns a client of a private etcd that this test alone
// may pause, restart or compact.
func privateClient(t *testing.T) (*testenv.Instance, *clientv3.Client) {
	t.Helper()
	in := testenv.Private(t, testenv.Etcd)
	cli, err := clientv3.New(clientv3.Config{Endpoints: in.Addrs(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return in, cli
}

// holds reports whether etcd has le's lock key with le's token.
func holds(t *testing.T, cli *clientv3.Client, prefix string, le lock.Lease) bool {
	t.Helper()
	resp := rawLock(t, cli, prefix, le.Key())
	return len(resp.Kvs) == 1 && uint64(resp.Kvs[0].CreateRevision) == le.Token()
}

// TestRestartMidHold restarts etcd while a lock is held: etcd keeps its
// data and leases, so the lease may survive; whatever happened, Refresh and
// Release must report what etcd holds, and tokens keep growing.
func TestRestartMidHold(t *testing.T) {
	in, cli := privateClient(t)
	prefix := testPrefix(t)
	l := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = l.Close() })
	ctx := t.Context()
	le, err := l.TryAcquire(ctx, "held", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	short, err := l.TryAcquire(ctx, "short", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	in.Restart(t)
	t.Logf("etcd restarted in %v", time.Since(start))

	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = le.Refresh(rctx, 5*time.Second)
	held := holds(t, cli, prefix, le)
	switch {
	case err == nil && !held:
		t.Fatal("Refresh succeeded although etcd no longer has the lock key")
	case errors.Is(err, lock.ErrNotHeld) && held:
		t.Fatal("Refresh reported ErrNotHeld although etcd still has the lock key with its token")
	case err != nil && !errors.Is(err, lock.ErrNotHeld):
		t.Fatalf("Refresh after the restart: %v", err)
	}
	t.Logf("after the restart the lease was %s", map[bool]string{true: "kept", false: "lost"}[held])

	// The short lease was not refreshed: it must end, restart or not
	// (etcd extends leases by their TTL when it becomes leader again).
	deadline := time.Now().Add(2*time.Second + expirySlack + 2*time.Second)
	for holds(t, cli, prefix, short) {
		if time.Now().After(deadline) {
			t.Fatalf("an unrefreshed 2 s lease still held %v after the restart", time.Since(start))
		}
		time.Sleep(100 * time.Millisecond) // probing etcd; the test watches nothing
	}
	if err := short.Refresh(ctx, 2*time.Second); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh of the expired lease after the restart: %v, want ErrNotHeld", err)
	}

	err = le.Release(ctx)
	if held && err != nil {
		t.Errorf("Release of a lease etcd kept: %v", err)
	}
	if !held && !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release of a lease etcd lost: %v, want ErrNotHeld", err)
	}
	if holds(t, cli, prefix, le) {
		t.Error("the lock key survived its Release")
	}
	// Pooled leases from before the restart serve again or are replaced.
	next, err := l.TryAcquire(ctx, "held", 5*time.Second)
	if err != nil {
		t.Fatalf("take after the restart: %v", err)
	}
	if next.Token() <= le.Token() {
		t.Errorf("token %d after the restart, not greater than %d before it", next.Token(), le.Token())
	}
	if err := next.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestAmbiguousTakeRevoked pauses etcd so that a take times out with its
// transaction in flight: whether or not etcd applied it later, the key must
// not stay locked by a lease nobody holds.
func TestAmbiguousTakeRevoked(t *testing.T) {
	in, cli := privateClient(t)
	prefix := testPrefix(t)
	l := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = l.Close() })
	ctx := t.Context()
	// Warm the pool so that the take's only request is the transaction.
	le, err := l.TryAcquire(ctx, "warm", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	etcdlock.Quiesce(l)

	in.Pause(t)
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = l.TryAcquire(tctx, "k", time.Minute)
	cancel()
	in.Resume(t)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("take while etcd was paused: %v, want context.DeadlineExceeded", err)
	}
	etcdlock.Quiesce(l) // the background revoke of the take's lease
	if resp := rawLock(t, cli, prefix, "k"); len(resp.Kvs) != 0 {
		t.Fatalf("after an interrupted take the key is held by lease %x that nobody holds", resp.Kvs[0].Lease)
	}
	other := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = other.Close() })
	le, err = other.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatalf("take after an interrupted take: %v", err)
	}
	_ = le.Release(ctx)
}

// TestWaitCompacted compacts etcd past the revision a waiter watches from:
// Wait must return (a spurious wake-up, so the caller tries again from a
// newer revision) rather than block or fail, and keep working after.
func TestWaitCompacted(t *testing.T) {
	_, cli := privateClient(t)
	prefix := testPrefix(t)
	holder := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	waiter := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = holder.Close(); _ = waiter.Close() })
	ctx := t.Context()
	le, err := holder.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := waiter.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	held := failedAttempt(t, waiter, "k")
	var rev int64
	for i := range 5 {
		resp, err := cli.Put(ctx, prefix+"scratch", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := sub.Wait(wctx, held); err != nil {
		t.Fatalf("Wait from a compacted revision: %v, want nil (try again)", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Wait from a compacted revision took %v, want it to return at once", d)
	}
	// The next attempt sees a newer revision; its Wait wakes on release.
	held = failedAttempt(t, waiter, "k")
	woke := make(chan error, 1)
	go func() { woke <- sub.Wait(wctx, held) }()
	released := time.Now()
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-woke; err != nil {
		t.Fatalf("Wait after the compaction: %v", err)
	}
	if d := time.Since(released); d > time.Second {
		t.Errorf("Wait returned %v after the release", d)
	}
}

func failedAttempt(t *testing.T, l lock.Locker, key string) *lock.NotAcquiredError {
	t.Helper()
	_, err := l.TryAcquire(t.Context(), key, time.Minute)
	var held *lock.NotAcquiredError
	if !errors.As(err, &held) {
		t.Fatalf("TryAcquire of a held key: %v, want a *lock.NotAcquiredError", err)
	}
	return held
}

// TestWaitCancelled cancels a Wait in the middle of its watch: it returns
// promptly with the context's error, and once the subscription, the Locker
// and the client are closed nothing of them is left running.
func TestWaitCancelled(t *testing.T) {
	prefix := testPrefix(t)
	ctx := t.Context()
	holder := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	// The holder's connection and take come before the baseline.
	le, err := holder.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer le.Release(context.WithoutCancel(ctx))
	etcdlock.Quiesce(holder)
	baseline := leakcheck.Snapshot()
	func() {
		cli, err := clientv3.New(clientv3.Config{Endpoints: testenv.EtcdEndpoints(t), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		waiter := mustNew(t, cli, etcdlock.WithPrefix(prefix))
		defer waiter.Close()
		sub, err := waiter.Subscribe(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		held := failedAttempt(t, waiter, "k")
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- sub.Wait(wctx, held) }()
		time.Sleep(100 * time.Millisecond) // let Wait block in its watch; there is no event for that
		cancelled := time.Now()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Wait cancelled mid-watch: %v, want context.Canceled", err)
		}
		if d := time.Since(cancelled); d > conformance.SchedulingSlack {
			t.Errorf("Wait returned %v after its context was cancelled", d)
		}
		// Acquire cancelled mid-wait, likewise.
		actx, acancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer acancel()
		if _, err := lock.Acquire(actx, waiter, "k", time.Minute); !errors.Is(err, lock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Acquire at its deadline: %v", err)
		}
		if err := sub.Close(); err != nil {
			t.Errorf("Subscription.Close: %v", err)
		}
		if err := sub.Wait(ctx, held); !errors.Is(err, etcdlock.ErrClosed) {
			t.Errorf("Wait after Close: %v, want ErrClosed", err)
		}
	}()
	// Everything started since the baseline (the waiter's client, Locker
	// and watch) has ended.
	if err := leakcheck.Find(baseline); err != nil {
		t.Errorf("goroutines left behind: %v", err)
	}
}

// TestInvalidArguments covers bad input specific to etcd: TTLs beyond
// etcd's maximum lease TTL, a nil client, bad options, a closed Locker,
// and leases from elsewhere.
func TestInvalidArguments(t *testing.T) {
	ctx := t.Context()
	l := newLocker(t, nil, etcdlock.WithPrefix(testPrefix(t)))
	huge := time.Duration(1<<63 - 1)
	if _, err := l.TryAcquire(ctx, "k", huge); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("TryAcquire with TTL %v: %v, want ErrInvalidTTL", huge, err)
	}
	var te *lock.TTLError
	if _, _, err := l.Claim(ctx, "k", huge); !errors.As(err, &te) {
		t.Errorf("Claim with TTL %v: %v, want a *lock.TTLError", huge, err)
	}
	le, err := l.TryAcquire(ctx, "k", 100*time.Millisecond) // rounds up: valid
	if err != nil {
		t.Fatalf("TryAcquire with a sub-second TTL: %v", err)
	}
	if err := le.Refresh(ctx, huge); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("Refresh with TTL %v: %v, want ErrInvalidTTL", huge, err)
	}
	if err := le.Refresh(ctx, -time.Second); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("Refresh with a negative TTL: %v, want ErrInvalidTTL", err)
	}
	if err := l.Complete(ctx, le, nil, huge); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("Complete with retention %v: %v, want ErrInvalidTTL", huge, err)
	}
	mle, err := memlock.New().TryAcquire(ctx, "k", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Complete(ctx, mle, nil, time.Minute); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("Complete of a memlock lease: %v, want ErrInvalidArgument", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Errorf("Release after the bad calls: %v", err)
	}

	cli := newClient(t, nil)
	for name, opts := range map[string][]etcdlock.Option{
		"lease pool":       {etcdlock.WithLeasePool(-1)},
		"negative slack":   {etcdlock.WithTTLSlack(-time.Second)},
		"slack too long":   {etcdlock.WithTTLSlack(2 * time.Hour)},
		"timeout":          {etcdlock.WithTimeout(0)},
		"max record size":  {etcdlock.WithMaxRecordSize(0)},
		"retention bucket": {etcdlock.WithRetentionBucket(time.Millisecond)},
		"two bad options":  {etcdlock.WithTimeout(0), etcdlock.WithLeasePool(-1)},
	} {
		if b, err := etcdlock.New(cli, opts...); !errors.Is(err, lock.ErrInvalidArgument) || b != nil {
			t.Errorf("New with a bad option (%s): %v, %v; want nil, ErrInvalidArgument", name, b, err)
		}
	}
	if b, err := etcdlock.New(nil); !errors.Is(err, lock.ErrInvalidArgument) || b != nil {
		t.Errorf("New(nil): %v, %v; want nil, ErrInvalidArgument", b, err)
	}

	c := newLocker(t, nil, etcdlock.WithPrefix(testPrefix(t)))
	le, err = c.TryAcquire(ctx, "k", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.TryAcquire(ctx, "other", time.Second); !errors.Is(err, etcdlock.ErrClosed) {
		t.Errorf("TryAcquire after Close: %v, want ErrClosed", err)
	}
	if _, _, err := c.Claim(ctx, "other", time.Second); !errors.Is(err, etcdlock.ErrClosed) {
		t.Errorf("Claim after Close: %v, want ErrClosed", err)
	}
	if _, err := c.Subscribe(ctx, "other"); !errors.Is(err, etcdlock.ErrClosed) {
		t.Errorf("Subscribe after Close: %v, want ErrClosed", err)
	}
	if err := le.Refresh(ctx, 10*time.Second); err != nil {
		t.Errorf("Refresh of a lease taken before Close: %v", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Errorf("Release of a lease taken before Close: %v", err)
	}
}

// TestCloseRevokesPool checks that pooled leases do not outlive Close.
func TestCloseRevokesPool(t *testing.T) {
	cli := newClient(t, nil)
	prefix := testPrefix(t)
	l := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	ctx := t.Context()
	var ids []clientv3.LeaseID
	var leases []lock.Lease
	for i := range 3 {
		le, err := l.TryAcquire(ctx, fmt.Sprint(i), 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, clientv3.LeaseID(rawLock(t, cli, prefix, le.Key()).Kvs[0].Lease))
		leases = append(leases, le)
	}
	for _, le := range leases {
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	etcdlock.Quiesce(l)
	if n := etcdlock.IdleLeases(l); n < 3 {
		t.Fatalf("pool holds %d leases after 3 releases, want at least 3", n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		resp, err := cli.TimeToLive(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if resp.TTL != -1 {
			t.Errorf("lease %x still lives (%d s) after Close", id, resp.TTL)
		}
	}
}

// TestPoolOff checks a Locker without a pool: every take grants its lease
// and every release revokes it.
func TestPoolOff(t *testing.T) {
	var c counter
	cli := newClient(t, &c)
	prefix := testPrefix(t)
	l := mustNew(t, cli, etcdlock.WithPrefix(prefix), etcdlock.WithLeasePool(0))
	t.Cleanup(func() { _ = l.Close() })
	ctx := t.Context()
	before := c.load()
	le, err := l.TryAcquire(ctx, "k", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := clientv3.LeaseID(rawLock(t, cli, prefix, "k").Kvs[0].Lease)
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	etcdlock.Quiesce(l)
	// grant, txn, get (this test's), txn, revoke
	if n := c.load() - before; n != 5 {
		t.Errorf("take+release without a pool made %d requests, want 4 and the test's Get", n)
	}
	resp, err := cli.TimeToLive(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if resp.TTL != -1 {
		t.Errorf("lease %x still lives after Release without a pool", id)
	}
}

// TestZeroSlack checks WithTTLSlack(0): leases last exactly the TTL rounded
// up to seconds.
func TestZeroSlack(t *testing.T) {
	cli := newClient(t, nil)
	prefix := testPrefix(t)
	l := mustNew(t, cli, etcdlock.WithPrefix(prefix), etcdlock.WithTTLSlack(0))
	t.Cleanup(func() { _ = l.Close() })
	ctx := t.Context()
	for range 2 { // the second take finds the first's lease too old
		le, err := l.TryAcquire(ctx, "k", 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		kv := rawLock(t, cli, prefix, "k").Kvs[0]
		if string(kv.Value) != "3" {
			t.Errorf("lease TTL %s s with zero slack, want 3", kv.Value)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestInterruptedRefreshMove pauses etcd while a Refresh moves the lock to a
// lease of another TTL, so that the move's outcome is unknown: the lease
// must still refresh, report its deadline conservatively, and release.
func TestInterruptedRefreshMove(t *testing.T) {
	in, cli := privateClient(t)
	prefix := testPrefix(t)
	l := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = l.Close() })
	ctx := t.Context()
	// Warm the pool for both TTLs so that the move's only request is its
	// transaction.
	for _, ttl := range []time.Duration{10 * time.Second, 20 * time.Second} {
		le, err := l.TryAcquire(ctx, "warm", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	etcdlock.Quiesce(l)
	le, err := l.TryAcquire(ctx, "k", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	etcdlock.Quiesce(l)
	before := le.(lock.Deadliner).Deadline()

	in.Pause(t)
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = le.Refresh(rctx, 20*time.Second)
	cancel()
	in.Resume(t)
	if err == nil || errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Refresh while etcd was paused: %v, want a transient error", err)
	}
	if dl := le.(lock.Deadliner).Deadline(); dl.After(before) {
		t.Errorf("Deadline moved %v later after a Refresh that failed", dl.Sub(before))
	}
	sent := time.Now()
	if err := le.Refresh(ctx, 20*time.Second); err != nil {
		t.Fatalf("Refresh after the interrupted one: %v", err)
	}
	if dl := le.(lock.Deadliner).Deadline(); dl.Before(sent.Add(20 * time.Second)) {
		t.Errorf("Deadline %v after the second Refresh, want at least 20 s", dl.Sub(sent))
	}
	kv := rawLock(t, cli, prefix, "k").Kvs[0]
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL < 20 {
		t.Errorf("after the second Refresh the key is on a lease of %d s, want at least 20", ttl.GrantedTTL)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if resp := rawLock(t, cli, prefix, "k"); len(resp.Kvs) != 0 {
		t.Error("the key survived its Release")
	}
}
