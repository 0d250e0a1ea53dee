package memcachedlock_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
)

// faultConn is a client connection that carries out the faults of a
// testenv.FaultSwitch on the requests that write (add, cas, incr, ...): a
// lost reply lets the request through and, once the server's answer
// arrived, returns a timeout instead of it; a stall swallows the request
// and answers nothing until the connection's deadline (which gomemcache
// sets from its Timeout before each request) or the test's end. before,
// when set, is called with each request's command before it is sent.
type faultConn struct {
	net.Conn
	faults *testenv.FaultSwitch
	before func(cmd string)

	mu       sync.Mutex
	pending  testenv.Fault // the fault of the request last written
	deadline time.Time     // the read deadline
}

// writeCommands are the memcached commands that change an item: the
// requests whose outcome can be unknown.
var writeCommands = map[string]bool{
	"add": true, "set": true, "cas": true, "replace": true, "append": true, "prepend": true,
	"incr": true, "decr": true, "delete": true, "touch": true,
}

func (c *faultConn) Write(b []byte) (int, error) {
	cmd, _, _ := bytes.Cut(b, []byte(" "))
	if c.before != nil {
		c.before(string(cmd))
	}
	var f testenv.Fault
	if c.faults != nil && writeCommands[string(cmd)] {
		f = c.faults.Take()
	}
	c.mu.Lock()
	c.pending = f
	c.mu.Unlock()
	if f == testenv.Stall {
		return len(b), nil // a hung server: it never sees the request
	}
	return c.Conn.Write(b)
}

func (c *faultConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	f, deadline := c.pending, c.deadline
	c.mu.Unlock()
	switch f {
	case testenv.LoseReply:
		if _, err := c.Conn.Read(b); err != nil {
			return 0, err
		}
		return 0, testenv.ErrLostReply // the server answered: it applied the request
	case testenv.Stall:
		ctx := context.Background()
		if !deadline.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline)
			defer cancel()
		}
		_ = c.faults.Stall(ctx)
		return 0, os.ErrDeadlineExceeded
	}
	return c.Conn.Read(b)
}

func (c *faultConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *faultConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

// faultyClient returns a client of its own, closed at the end of tb, whose
// connections are faultConns.
func faultyClient(tb testing.TB, faults *testenv.FaultSwitch, before func(cmd string)) *memcache.Client {
	tb.Helper()
	return newClientWith(tb, testenv.MemcachedAddr(tb), func(conn net.Conn) net.Conn {
		return &faultConn{Conn: conn, faults: faults, before: before}
	})
}

// newFaultyLocker is conformance.Config.NewFaultyLocker: an independent
// Locker whose connections carry out the faults armed on the returned
// switch.
func newFaultyLocker(t *testing.T, opts ...memcachedlock.Option) (*memcachedlock.Locker, *testenv.FaultSwitch) {
	t.Helper()
	faults := testenv.NewFaultSwitch(t)
	l, err := memcachedlock.New(faultyClient(t, faults, nil), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l, faults
}

var _ conformance.Faults = (*testenv.FaultSwitch)(nil)

// Concurrent calls on one lease never misreport ownership: two Refreshes
// at once both succeed, and a Release racing Refreshes succeeds and leaves
// the key free. Regression test of issue 13, finding 3 (before the fix 37
// to 72 rounds of 200 went wrong).
func TestConcurrentLeaseCalls(t *testing.T) {
	testenv.RaceLeaseCalls(t, newLocker(t), newLocker(t), testKey(t, "k"), 10*time.Second, 200)
}

// If the lock item vanishes between a take's add and its incr (evicted,
// flushed) and another Locker takes the key in between, the first take
// must not return a lease: it would carry a greater token than the real
// holder's. Regression test of issue 13, finding 6. Nor may it say another
// lease held the key all along: its own item did, for a while.
func TestTakeRefusedWhenItemVanishesBeforeIncr(t *testing.T) {
	prefix := testPrefix(t)
	const key = "k"
	ctx := t.Context()
	raw := newClient(t, new(atomic.Int64))
	b := newLocker(t, memcachedlock.WithPrefix(prefix))
	var (
		once sync.Once
		held lock.Lease
	)
	evictAndTake := func(cmd string) {
		if cmd != "incr" {
			return
		}
		once.Do(func() {
			// memcached evicts the fresh item; another process takes the
			// key and draws its token, all before A's incr arrives.
			if err := raw.Delete(prefix + "l:r" + key); err != nil {
				t.Errorf("deleting the lock item: %v", err)
				return
			}
			var err error
			if held, err = b.TryAcquire(ctx, key, time.Minute); err != nil {
				t.Errorf("B's take of the vanished key: %v", err)
			}
		})
	}
	a, err := memcachedlock.New(faultyClient(t, nil, evictAndTake), memcachedlock.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	le, err := a.TryAcquire(ctx, key, time.Minute)
	if held == nil {
		t.Fatal("the fault did not run: no incr was sent")
	}
	defer held.Release(context.WithoutCancel(ctx))
	if err == nil {
		t.Fatalf("A's take returned a lease with token %d while B holds the key with token %d: token order does not follow take order", le.Token(), held.Token())
	}
	if errors.Is(err, lock.ErrNotAcquired) {
		t.Errorf("A's take: %v, want an error of unknown outcome: A's own item held the key until it vanished", err)
	}
	if err := held.Refresh(ctx, time.Minute); err != nil {
		t.Errorf("B's lease after A's refused take: %v, want it still held", err)
	}
}

// A Release whose reply was lost went through: the lease reports
// ErrNotHeld from then on (memcached keeps no trace of the release, so a
// retried Release too) and never touches the next holder's lock.
func TestReleaseReplyLost(t *testing.T) {
	a, faults := newFaultyLocker(t)
	testenv.LoseReleaseReply(t, a, faults, newLocker(t), testKey(t, "k"), time.Minute, false)
}

// A take whose add reply was lost gives the item back: the key is free at
// once, not at the TTL.
func TestTakeReplyLost(t *testing.T) {
	ctx := t.Context()
	key := testKey(t, "k")
	a, faults := newFaultyLocker(t)
	faults.LoseNextReply()
	if le, err := a.TryAcquire(ctx, key, time.Minute); err == nil || errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("TryAcquire with its reply lost: (%v, %v), want an error of unknown outcome", le, err)
	}
	if err := take(t, newLocker(t), key, time.Minute).Release(ctx); err != nil {
		t.Fatal(err)
	}
}
