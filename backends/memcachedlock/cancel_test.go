package memcachedlock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/internal/testenv"
)

// gatedConn holds back the replies to one command: the request reaches the
// server and is applied, and its answer is handed to the client only once
// reply is closed. applied is told (without blocking) when the server's
// answer to such a request arrived, so the command has been applied: a
// signal on write alone would race with the server reading the request.
type gatedConn struct {
	net.Conn
	cmd     string
	applied chan<- struct{}
	reply   <-chan struct{}

	mu      sync.Mutex
	holding bool
}

func (c *gatedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if cmd, _, _ := bytes.Cut(b, []byte(" ")); string(cmd) == c.cmd && err == nil {
		c.mu.Lock()
		c.holding = true
		c.mu.Unlock()
	}
	return n, err
}

func (c *gatedConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	hold := c.holding
	c.holding = false
	c.mu.Unlock()
	if !hold {
		return c.Conn.Read(b)
	}
	n, err := c.Conn.Read(b)
	if n > 0 {
		select {
		case c.applied <- struct{}{}:
		default:
		}
	}
	<-c.reply
	return n, err
}

// slowReplies returns a Locker whose replies to cmd reach it only once
// answer was called, a channel told when the server has applied such a
// request (its reply arrived and is held back), and answer. answer is
// called at the end of tb at the latest.
func slowReplies(tb testing.TB, cmd string) (l *memcachedlock.Locker, applied <-chan struct{}, answer func()) {
	tb.Helper()
	s := make(chan struct{}, 1)
	reply := make(chan struct{})
	answer = sync.OnceFunc(func() { close(reply) })
	c := newClientWith(tb, testenv.MemcachedAddr(tb), func(conn net.Conn) net.Conn {
		return &gatedConn{Conn: conn, cmd: cmd, applied: s, reply: reply}
	})
	l, err := memcachedlock.New(c)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	tb.Cleanup(answer) // runs first: the Locker's Close waits for the reply
	return l, s, answer
}

// returnsPromptly waits for the error of a call whose context just ended.
func returnsPromptly(t *testing.T, what string, errc <-chan error, want error) {
	t.Helper()
	select {
	case err := <-errc:
		if !errors.Is(err, want) {
			t.Fatalf("%s: got %v, want an error matching %v", what, err, want)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("%s still blocked 2 s after its context ended", what)
	}
}

// A take whose caller gave up while its add was in flight went through on
// the server all the same: the abandoned take gives the key back once the
// reply arrives, and Close waits for that, so the key is free long before
// its TTL.
func TestAbandonedTakeGivenBack(t *testing.T) {
	a, applied, answer := slowReplies(t, "add")
	other := newLocker(t)
	key := testKey(t, "k")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		le, err := a.TryAcquire(ctx, key, time.Minute)
		if le != nil {
			err = fmt.Errorf("a lease with token %d and the error %v", le.Token(), err)
		}
		errc <- err
	}()
	<-applied
	cancel()
	returnsPromptly(t, "TryAcquire cancelled while its add was in flight", errc, context.Canceled)
	refused(t, other, key, "the abandoned take's add was applied")
	answer()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	le, err := other.TryAcquire(t.Context(), key, time.Minute)
	if err != nil {
		t.Fatalf("after Close waited for the abandoned take, the key must be free (its TTL is a minute): %v", err)
	}
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A lease call abandoned with its cas in flight keeps the lease's turn
// until its reply arrives: the next call waits for it, as long as its own
// context allows, and then sees what the abandoned one did.
func TestAbandonedLeaseCallKeepsTurn(t *testing.T) {
	a, applied, answer := slowReplies(t, "cas")
	other := newLocker(t)
	key := testKey(t, "k")
	le := take(t, a, key, time.Minute)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- le.Refresh(ctx, time.Minute) }()
	<-applied
	cancel()
	returnsPromptly(t, "Refresh cancelled while its cas was in flight", errc, context.Canceled)

	short, stop := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer stop()
	go func() { errc <- le.Release(short) }()
	returnsPromptly(t, "Release while an abandoned Refresh awaits its reply", errc, context.DeadlineExceeded)
	refused(t, other, key, "neither the abandoned Refresh nor the Release that gave up frees the key")

	answer()
	if err := le.Release(t.Context()); err != nil {
		t.Fatalf("Release once the abandoned Refresh was answered: %v", err)
	}
	if err := le.Refresh(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Refresh after Release: got %v, want ErrNotHeld", err)
	}
	if err := take(t, other, key, time.Minute).Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}
