package memcachedlock_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/internal/testenv"
)

// A take whose own add went through but that cannot hand out a lease does
// not report the key "held by another lease" (the torture harness found
// such takes failing its linearizability check): its error is of unknown
// outcome, so lock.Acquire stops and says why, and the key is not left
// held by an item no lease knows of.

// wantVoid fails unless err is a take's error of unknown outcome.
func wantVoid(t *testing.T, le lock.Lease, err error) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("the take returned a lease (token %d), want an error of unknown outcome", le.Token())
	case errors.Is(err, lock.ErrNotAcquired):
		t.Fatalf("the take: %v; want an error of unknown outcome, not ErrNotAcquired: the take's own add held the key, for a while at least", err)
	}
}

// The take's item vanished (expired while its process stood still,
// evicted) between its add and the check after its incr, and nobody took
// the key meanwhile.
func TestTakeItemGoneBeforeTokenIsUnknown(t *testing.T) {
	prefix := testPrefix(t)
	const key = "k"
	raw := newClient(t, new(atomic.Int64))
	deleted := false
	evict := func(cmd string) {
		if cmd == "incr" && !deleted {
			deleted = true
			if err := raw.Delete(prefix + "l:r" + key); err != nil {
				t.Errorf("deleting the lock item: %v", err)
			}
		}
	}
	a, err := memcachedlock.New(faultyClient(t, nil, evict), memcachedlock.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	le, err := a.TryAcquire(t.Context(), key, time.Minute)
	if !deleted {
		t.Fatal("the fault did not run: no incr was sent")
	}
	wantVoid(t, le, err)
	other := newLocker(t, memcachedlock.WithPrefix(prefix))
	if err := take(t, other, key, time.Minute).Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// The lease ran out while its take was under way (its incr answered after
// the TTL): the take gives its item back and reports an unknown outcome.
func TestTakeTokenAfterTTLIsUnknown(t *testing.T) {
	prefix := testPrefix(t)
	const key, ttl = "k", time.Millisecond // granted: a whole second
	var added time.Time
	slow := func(cmd string) {
		switch cmd {
		case "add":
			added = time.Now() // after the take's send time
		case "incr":
			// A slow network: the incr leaves after the lease ran out.
			time.Sleep(time.Until(added.Add(time.Second)))
		}
	}
	a, err := memcachedlock.New(faultyClient(t, nil, slow), memcachedlock.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	le, err := a.TryAcquire(t.Context(), key, ttl)
	if added.IsZero() {
		t.Fatal("the fault did not run: no add was sent")
	}
	wantVoid(t, le, err)
}

// scriptConn answers a request with an error of fail's choosing instead of
// its reply, once the server's reply arrived (so the request was applied);
// fail returns nil to let the reply through.
type scriptConn struct {
	net.Conn
	fail func(cmd string) error

	mu      sync.Mutex
	pending error
}

func (c *scriptConn) Write(b []byte) (int, error) {
	cmd, _, _ := bytes.Cut(b, []byte(" "))
	err := c.fail(string(cmd))
	c.mu.Lock()
	c.pending = err
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *scriptConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	err := c.pending
	c.pending = nil
	c.mu.Unlock()
	if err == nil {
		return c.Conn.Read(b)
	}
	if _, rerr := c.Conn.Read(b); rerr != nil {
		return 0, rerr
	}
	_ = c.Conn.Close()
	return 0, err
}

// scriptedLocker returns a Locker, closed at the end of t, whose
// connections are scriptConns answering by fail.
func scriptedLocker(t *testing.T, fail func(cmd string) error, opts ...memcachedlock.Option) *memcachedlock.Locker {
	t.Helper()
	c := newClientWith(t, testenv.MemcachedAddr(t), func(conn net.Conn) net.Conn {
		return &scriptConn{Conn: conn, fail: fail}
	})
	l, err := memcachedlock.New(c, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// The add's reply was lost on a connection the server closed, so the take
// sent it again; the retry found the item, and reading it back to tell
// whose it is failed. The take must not report another lease's hold (the
// item is its own) and must give the item back.
func TestTakeAddRetryUnreadableIsUnknown(t *testing.T) {
	key := testKey(t, "k")
	var adds, gets atomic.Int32
	fail := func(cmd string) error {
		switch {
		case cmd == "add" && adds.Add(1) == 1:
			return io.EOF // the server applied the add and closed the connection
		case cmd == "gets" && gets.Add(1) == 1:
			return os.ErrDeadlineExceeded // the read-back times out
		}
		return nil
	}
	a := scriptedLocker(t, fail)
	le, err := a.TryAcquire(t.Context(), key, time.Minute)
	if adds.Load() < 2 || gets.Load() < 1 {
		t.Fatalf("the faults did not run: %d adds, %d gets", adds.Load(), gets.Load())
	}
	wantVoid(t, le, err)
	// Given back at once: another Locker takes the key long before its
	// minute is up.
	if err := take(t, newLocker(t), key, time.Minute).Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// The add's reply was lost on a connection the server closed; before the
// retried add, the item went (it expired) and another Locker took the key.
// The retry finds the other's item: the take is refused, as a take after a
// server restart is (the client cannot tell a dead pooled connection from
// this; see the package doc), hands out no lease and leaves the other's
// lease alone.
func TestTakeAddRetryFindsOtherIsRefused(t *testing.T) {
	prefix := testPrefix(t)
	const key = "k"
	raw := newClient(t, new(atomic.Int64))
	other := newLocker(t, memcachedlock.WithPrefix(prefix))
	var (
		adds atomic.Int32
		held lock.Lease
	)
	fail := func(cmd string) error {
		if cmd != "add" {
			return nil
		}
		switch adds.Add(1) {
		case 1:
			return io.EOF // the server applied the add and closed the connection
		case 2:
			// Before the retry: the item expires and another Locker
			// takes the key.
			if err := raw.Delete(prefix + "l:r" + key); err != nil {
				t.Errorf("deleting the lock item: %v", err)
			}
			var err error
			if held, err = other.TryAcquire(t.Context(), key, time.Minute); err != nil {
				t.Errorf("the other Locker's take: %v", err)
			}
		}
		return nil
	}
	a := scriptedLocker(t, fail, memcachedlock.WithPrefix(prefix))
	le, err := a.TryAcquire(t.Context(), key, time.Minute)
	if held == nil {
		t.Fatalf("the faults did not run: %d adds", adds.Load())
	}
	if !errors.Is(err, lock.ErrNotAcquired) {
		t.Errorf("the take: (%v, %v), want a refusal", le, err)
	}
	// The other Locker's lease is untouched.
	if err := held.Release(t.Context()); err != nil {
		t.Errorf("the other Locker's lease after the take: %v, want it still held", err)
	}
}
