package driver_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/driver"
)

// This file is a complete custom backend built on the toolkit: toylock,
// whose "server" is a map in memory that several Lockers share, as several
// processes would share a real server. Everything but take, refresh and
// release comes from package driver. TestToyConformance runs the
// conformance suite on it.

const toyErrs = driver.Name("toylock")

// toyServer is the toy's server: holdings by key, and a fencing counter.
type toyServer struct {
	mu    sync.Mutex
	next  uint64
	held  map[string]toyHolding
	calls int // requests answered, to show in the example
}

type toyHolding struct {
	token   uint64
	expires time.Time
}

// toyLocker is the backend's Locker: a Gate and a connection to the server.
type toyLocker struct {
	gate driver.Gate
	srv  *toyServer
}

// toyOption configures a toyLocker; a bad one is reported by newToy.
type toyOption func(*toyLocker) error

func newToy(srv *toyServer, opts ...toyOption) (*toyLocker, error) {
	l := &toyLocker{gate: driver.Gate{Name: toyErrs}, srv: srv}
	if srv == nil {
		return nil, toyErrs.InvalidArgument("nil server")
	}
	if err := driver.Apply(l, opts); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *toyLocker) Close() error { return l.gate.Close(nil) }

// TryAcquire is the backend's own take: one atomic request to the server.
func (l *toyLocker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if err := l.gate.Check(ctx, "take", key, ttl); err != nil {
		return nil, err
	}
	sent := time.Now()
	s := l.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if h, ok := s.held[key]; ok && time.Now().Before(h.expires) {
		return nil, &lock.NotAcquiredError{Key: key, Remaining: time.Until(h.expires)}
	}
	s.next++
	s.held[key] = toyHolding{token: s.next, expires: sent.Add(ttl)}
	le := &toyLease{l: l}
	le.Init(&l.gate, key, s.next, sent, ttl)
	return le, nil
}

// toyLease gets Key, Token, Deadline, its state and the serialisation of
// Release from driver.Lease.
type toyLease struct {
	driver.Lease
	l *toyLocker
}

// owned reports whether the server's holding of the key is this lease's.
// The server's mutex is held.
func (le *toyLease) owned() bool {
	h, ok := le.l.srv.held[le.Key()]
	return ok && h.token == le.Token() && time.Now().Before(h.expires)
}

func (le *toyLease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	if err := le.Check("refresh"); err != nil {
		return err
	}
	sent := time.Now()
	s := le.l.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if !le.owned() {
		le.Lose()
		return le.NotHeld("refresh")
	}
	s.held[le.Key()] = toyHolding{token: le.Token(), expires: sent.Add(ttl)}
	le.Extend(sent, ttl)
	return nil
}

func (le *toyLease) Release(ctx context.Context) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	return le.End(ctx, "release", func() error {
		s := le.l.srv
		s.mu.Lock()
		defer s.mu.Unlock()
		s.calls++
		if !le.owned() {
			return le.NotHeld("release")
		}
		delete(s.held, le.Key())
		return nil
	})
}

func TestToyConformance(t *testing.T) {
	srv := &toyServer{held: map[string]toyHolding{}}
	conformance.Run(t, conformance.Config{
		NewLocker: func(t *testing.T) lock.Locker {
			l, err := newToy(srv)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close() })
			return l
		},
		TTLGranularity: time.Millisecond,
	})
}

// A custom backend written with the toolkit: the toy above keeps only its
// server's take, refresh and release; errors, argument checks, the closed
// Locker, the lease's state, deadline and serialised Release come from
// package driver.
func Example() {
	ctx := context.Background()
	srv := &toyServer{held: map[string]toyHolding{}}
	a, _ := newToy(srv)
	b, _ := newToy(srv)

	le, err := a.TryAcquire(ctx, "invoice/42", time.Minute)
	fmt.Println("a takes:", le.Token(), err)
	_, err = b.TryAcquire(ctx, "invoice/42", time.Minute)
	fmt.Println("b takes:", errors.Is(err, lock.ErrNotAcquired))
	fmt.Println("a releases:", le.Release(ctx))
	fmt.Println("again:", le.Release(ctx))

	_ = a.Close()
	_, err = a.TryAcquire(ctx, "invoice/42", time.Minute)
	fmt.Println("closed:", errors.Is(err, lock.ErrClosed))
	_, err = newToy(nil)
	fmt.Println(err, errors.Is(err, lock.ErrInvalidArgument))
	fmt.Println("requests:", srv.calls)
	// Output:
	// a takes: 1 <nil>
	// b takes: true
	// a releases: <nil>
	// again: toylock: release "invoice/42": lock: lease not held
	// closed: true
	// toylock: nil server true
	// requests: 3
}
