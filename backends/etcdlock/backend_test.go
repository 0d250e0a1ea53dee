package etcdlock_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/conformance"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// rawKey returns the etcd key-value of key's lock, or nil.
func rawLock(t *testing.T, cli *clientv3.Client, prefix, key string) *clientv3.GetResponse {
	t.Helper()
	resp, err := cli.Get(t.Context(), prefix+"l/"+key)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	return resp
}

// TestRoundTrips checks the goal: a warm take plus release is two requests
// (two transactions), a cold one three, a same-TTL refresh one.
func TestRoundTrips(t *testing.T) {
	var c counter
	// A minute of slack keeps pooled leases fresh for the whole test even
	// on a loaded machine, so renewals never enter the counts.
	l := newLocker(t, &c, etcdlock.WithPrefix(testPrefix(t)), etcdlock.WithTTLSlack(time.Minute))
	ctx := t.Context()
	const ttl = 10 * time.Second

	before := c.load()
	le, err := l.TryAcquire(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	etcdlock.Quiesce(l)
	cold := c.load() - before
	// Cold: grant + take + release in line, one refill grant behind.
	if cold != 4 {
		t.Errorf("cold take+release made %d requests, want 4 (grant, txn, txn, background grant)", cold)
	}
	if n := etcdlock.IdleLeases(l); n != 2 {
		t.Errorf("pool holds %d leases after a cold take+release, want 2", n)
	}

	const rounds = 50
	before = c.load()
	txns := c.method("Txn")
	start := time.Now()
	for range rounds {
		le, err := l.TryAcquire(ctx, "k", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	etcdlock.Quiesce(l)
	took := time.Since(start)
	warm := float64(c.load()-before) / rounds
	if warm != 2 {
		t.Errorf("warm take+release made %.2f requests per round, want exactly 2", warm)
	}
	if got := c.method("Txn") - txns; got != 2*rounds {
		t.Errorf("%d transactions for %d rounds, want %d", got, rounds, 2*rounds)
	}
	t.Logf("take+release: cold %d requests, warm %.2f per round (%v per round)", cold, warm, took/rounds)

	le, err = l.TryAcquire(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	before = c.load()
	if err := le.Refresh(ctx, ttl); err != nil {
		t.Fatal(err)
	}
	if n := c.load() - before; n != 1 {
		t.Errorf("same-TTL Refresh made %d requests, want 1", n)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestPeerMutexRoundTrips measures what concurrency.Mutex needs for the
// same uncontended take and release with a fresh session, for comparison.
func TestPeerMutexRoundTrips(t *testing.T) {
	var c counter
	cli := newClient(t, &c)
	ctx := t.Context()
	before := c.load()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	if err != nil {
		t.Fatal(err)
	}
	m := concurrency.NewMutex(s, testPrefix(t))
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	n := c.load() - before
	t.Logf("concurrency.Mutex with a fresh session: %d requests (grant %d, keep-alive sends %d, txn %d, delete-range %d, revoke %d)",
		n, c.method("LeaseGrant"), c.method("LeaseKeepAlive"), c.method("Txn"), c.method("DeleteRange"), c.method("LeaseRevoke"))
	if n < 4 {
		t.Errorf("concurrency.Mutex take+release with a fresh session made %d requests; the comparison in the docs says 4 or more", n)
	}
}

// TestLockKeyLayout checks that keys are stored as they are, under the
// prefix, bound to a lease, with the token as their creation revision and
// the lease's TTL as value.
func TestLockKeyLayout(t *testing.T) {
	cli := newClient(t, nil)
	prefix := testPrefix(t)
	l := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = l.Close() })
	ctx := t.Context()
	for _, key := range []string{"a\x00b", "a/b/../c", "日本語 ", "%2F"} {
		le, err := l.TryAcquire(ctx, key, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		resp := rawLock(t, cli, prefix, key)
		if len(resp.Kvs) != 1 {
			t.Fatalf("key %q: %d etcd keys at %q, want 1", key, len(resp.Kvs), prefix+"l/"+key)
		}
		kv := resp.Kvs[0]
		if uint64(kv.CreateRevision) != le.Token() {
			t.Errorf("key %q: CreateRevision %d, Token %d: want them equal", key, kv.CreateRevision, le.Token())
		}
		if kv.Lease == 0 {
			t.Errorf("key %q: not bound to a lease", key)
		}
		ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
		if err != nil {
			t.Fatal(err)
		}
		if string(kv.Value) != strconv.FormatInt(ttl.GrantedTTL, 10) {
			t.Errorf("key %q: value %q, want the lease's granted TTL %d", key, kv.Value, ttl.GrantedTTL)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if resp := rawLock(t, cli, prefix, key); len(resp.Kvs) != 0 {
			t.Errorf("key %q: still in etcd after Release", key)
		}
	}
}

// TestNotAcquiredError checks what a failed attempt reports: the revision
// it saw (for the watch) and the holder's lease TTL as an upper bound.
func TestNotAcquiredError(t *testing.T) {
	prefix := testPrefix(t)
	a := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	b := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	ctx := t.Context()
	const ttl = 7 * time.Second
	le, err := a.TryAcquire(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer le.Release(context.WithoutCancel(ctx))
	_, err = b.TryAcquire(ctx, "k", time.Minute)
	var held *lock.NotAcquiredError
	if !errors.As(err, &held) {
		t.Fatalf("TryAcquire of a held key: %v, want a *lock.NotAcquiredError", err)
	}
	if held.Version < le.Token() {
		t.Errorf("Version %d is older than the holder's take at %d", held.Version, le.Token())
	}
	if held.Remaining < ttl || held.Remaining > ttl+etcdlock.DefaultTTLSlack+time.Second {
		t.Errorf("Remaining %v, want the holder's lease TTL, between %v and %v", held.Remaining, ttl, ttl+etcdlock.DefaultTTLSlack+time.Second)
	}
	if held.Key != "k" {
		t.Errorf("Key %q, want %q", held.Key, "k")
	}
}

// TestDeadline checks that Deadline is a lower bound of the server's expiry
// and at least the TTL after the take.
func TestDeadline(t *testing.T) {
	cli := newClient(t, nil)
	prefix := testPrefix(t)
	l := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = l.Close() })
	ctx := t.Context()
	for _, ttl := range []time.Duration{100 * time.Millisecond, 2500 * time.Millisecond, 4 * time.Second} {
		sent := time.Now()
		le, err := l.TryAcquire(ctx, "k", ttl)
		if err != nil {
			t.Fatal(err)
		}
		dl := le.(lock.Deadliner).Deadline()
		if dl.Before(sent.Add(max(ttl, 2*time.Second))) {
			t.Errorf("TTL %v: Deadline %v after the take, want at least the TTL rounded up to etcd's 2 s minimum", ttl, dl.Sub(sent))
		}
		kv := rawLock(t, cli, prefix, "k").Kvs[0]
		left, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
		if err != nil {
			t.Fatal(err)
		}
		// etcd reports whole seconds, rounded down: the server's expiry is
		// after now+left, and never more than a second after it.
		if server := time.Now().Add(time.Duration(left.TTL+1) * time.Second); dl.After(server) {
			t.Errorf("TTL %v: Deadline %v after the take is later than the server's expiry (%d s left)", ttl, dl.Sub(sent), left.TTL)
		}
		if limit := sent.Add(time.Duration(etcdlock.DefaultTTLSlack) + max(ttl, 2*time.Second) + time.Second); dl.After(limit) {
			t.Errorf("TTL %v: Deadline %v after the take, want at most the TTL rounded up plus the slack", ttl, dl.Sub(sent))
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRefreshNewTTL checks that a Refresh with another TTL moves the key to
// a lease of that TTL, keeps the token, and that the old lease no longer
// holds it.
func TestRefreshNewTTL(t *testing.T) {
	cli := newClient(t, nil)
	prefix := testPrefix(t)
	l := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = l.Close() })
	ctx := t.Context()
	le, err := l.TryAcquire(ctx, "k", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	before := rawLock(t, cli, prefix, "k").Kvs[0]
	sent := time.Now()
	if err := le.Refresh(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	after := rawLock(t, cli, prefix, "k").Kvs[0]
	if after.Lease == before.Lease {
		t.Fatalf("Refresh to another TTL left the key on lease %x", before.Lease)
	}
	if uint64(after.CreateRevision) != le.Token() {
		t.Errorf("Refresh changed the key's creation revision to %d, token %d", after.CreateRevision, le.Token())
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(after.Lease), clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL < 30 || ttl.GrantedTTL > 32 {
		t.Errorf("new lease granted %d s, want about 30", ttl.GrantedTTL)
	}
	if dl := le.(lock.Deadliner).Deadline(); dl.Before(sent.Add(30*time.Second - time.Second)) {
		t.Errorf("Deadline %v after the refresh, want about 30 s", dl.Sub(sent))
	}
	old, err := cli.TimeToLive(ctx, clientv3.LeaseID(before.Lease), clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	if len(old.Keys) != 0 {
		t.Errorf("the old lease still has keys %q", old.Keys)
	}
	// Back to a short TTL, then let it expire without refresh.
	if err := le.Refresh(ctx, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	other := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	deadline := time.Now().Add(2*time.Second + expirySlack + time.Second)
	for {
		o, err := other.TryAcquire(ctx, "k", time.Minute)
		if err == nil {
			_ = o.Release(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a lease refreshed to 2 s was still held after %v", time.Since(sent))
		}
		time.Sleep(100 * time.Millisecond) // probing: expiry sends no event to a prober
	}
	if err := le.Refresh(ctx, 2*time.Second); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh after expiry: %v, want ErrNotHeld", err)
	}
}

// TestLeaseRevokedBehindOurBack checks the lost-lease signal: when the
// etcd lease disappears, the next refresh reports ErrNotHeld and
// lock.KeepAlive cancels its context with ErrLeaseLost.
func TestLeaseRevokedBehindOurBack(t *testing.T) {
	cli := newClient(t, nil)
	prefix := testPrefix(t)
	l := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = l.Close() })
	ctx := t.Context()
	le, err := l.TryAcquire(ctx, "k", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k, err := lock.KeepAlive(ctx, le, 3*time.Second, lock.WithRefreshInterval(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	kv := rawLock(t, cli, prefix, "k").Kvs[0]
	revoked := time.Now()
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(kv.Lease)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-k.Context().Done():
	case <-time.After(3 * time.Second):
		t.Fatal("KeepAlive did not notice its lease was revoked")
	}
	if d := time.Since(revoked); d > time.Second {
		t.Errorf("loss noticed %v after the revoke, want within a refresh interval", d)
	}
	if !k.Lost() || !errors.Is(context.Cause(k.Context()), lock.ErrNotHeld) {
		t.Errorf("Keeper cause %v, want ErrLeaseLost matching ErrNotHeld", context.Cause(k.Context()))
	}
	if err := le.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release of a revoked lease: %v, want ErrNotHeld", err)
	}
}

// TestHandoff checks the goal: a waiter takes the key with one transaction
// after the release's watch event, promptly.
func TestHandoff(t *testing.T) {
	prefix := testPrefix(t)
	var wc counter
	holder := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	waiter := newLocker(t, &wc, etcdlock.WithPrefix(prefix))
	ctx := t.Context()
	for round := range 5 {
		le, err := holder.TryAcquire(ctx, "k", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		watches := wc.method("Watch")
		type result struct {
			at  time.Time
			err error
		}
		got := make(chan result, 1)
		go func() {
			w, err := lock.Acquire(ctx, waiter, "k", time.Minute)
			at := time.Now()
			if err == nil {
				err = w.Release(context.WithoutCancel(ctx))
			}
			got <- result{at, err}
		}()
		// The waiter's watch request is the event that it is about to
		// block (its watch replays anything after its attempt anyway).
		for wc.method("Watch") == watches {
			time.Sleep(time.Millisecond)
		}
		txns := wc.method("Txn")
		released := time.Now()
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-got:
			if r.err != nil {
				t.Fatalf("round %d: Acquire and release: %v", round, r.err)
			}
			if d := r.at.Sub(released); d > conformance.SchedulingSlack {
				t.Errorf("round %d: the waiter took the key %v after the release", round, d)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: the waiter did not take the key", round)
		}
		// One take after the event, one release.
		if n := wc.method("Txn") - txns; n != 2 {
			t.Errorf("round %d: the waiter made %d transactions from the release to its own release, want 2", round, n)
		}
	}
}

// TestExpiryWakesWaiter checks that a waiter wakes on the deletion etcd
// makes when the holder's lease expires, without polling.
func TestExpiryWakesWaiter(t *testing.T) {
	cli := newClient(t, nil)
	prefix := testPrefix(t)
	var wc counter
	holder := mustNew(t, cli, etcdlock.WithPrefix(prefix))
	t.Cleanup(func() { _ = holder.Close() })
	waiter := newLocker(t, &wc, etcdlock.WithPrefix(prefix))
	ctx := t.Context()
	le, err := holder.TryAcquire(ctx, "k", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Watch the key ourselves to learn when etcd deletes it.
	wch := cli.Watch(ctx, prefix+"l/k", clientv3.WithRev(int64(le.Token())+1), clientv3.WithFilterPut())
	deleted := make(chan time.Time, 1)
	go func() {
		for wr := range wch {
			if len(wr.Events) > 0 {
				deleted <- time.Now()
				return
			}
		}
	}()
	w, err := lock.Acquire(ctx, waiter, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Now()
	defer w.Release(context.WithoutCancel(ctx))
	var del time.Time
	select {
	case del = <-deleted:
	case <-time.After(5 * time.Second):
		t.Fatal("no deletion event seen by the test's own watch")
	}
	if d := took.Sub(del); d > conformance.SchedulingSlack {
		t.Errorf("the waiter took the key %v after etcd deleted it", d)
	}
	// Attempts: the first, the one after subscribing, at most one when the
	// wait reached the holder's Remaining, and the winning one.
	if n := wc.method("Txn"); n > 4 {
		t.Errorf("the waiter made %d attempts while waiting %v, want at most 4: it polled", n, took.Sub(del))
	}
}
