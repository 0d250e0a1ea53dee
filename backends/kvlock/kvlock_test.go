package kvlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/kvlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/testenv"
)

// client is one process's client of a memKV "server": every request can be
// stalled or have its reply lost, as on a network (conformance.Faults).
type client struct {
	*testenv.FaultSwitch
	kv *memKV
	// appliedStall makes a stalled request reach the server before its
	// reply stalls (by default it stalls on the way there).
	appliedStall bool
}

func newClient(t *testing.T, srv *memKV) *client {
	return &client{FaultSwitch: testenv.NewFaultSwitch(t), kv: srv}
}

// do sends one request: fn runs on the server. Faults are for the requests
// of the calls the suite makes, not for undoing an earlier one.
func (c *client) do(ctx context.Context, fn func()) error {
	if kvlock.IsUndo(ctx) {
		fn()
		return nil
	}
	switch c.Take() {
	case testenv.Stall:
		if c.appliedStall {
			fn()
		}
		return c.Stall(ctx)
	case testenv.LoseReply:
		fn()
		return testenv.ErrLostReply
	}
	fn()
	return nil
}

func (c *client) Create(ctx context.Context, key string, value []byte, ttl time.Duration) (created bool, cur []byte, rem time.Duration, err error) {
	err = c.do(ctx, func() { created, cur, rem, _ = c.kv.Create(ctx, key, value, ttl) })
	return
}

func (c *client) CompareAndDelete(ctx context.Context, key string, old []byte) (ok bool, err error) {
	err = c.do(ctx, func() { ok, _ = c.kv.CompareAndDelete(ctx, key, old) })
	return
}

func (c *client) CompareAndExpire(ctx context.Context, key string, old []byte, ttl time.Duration) (ok bool, err error) {
	err = c.do(ctx, func() { ok, _ = c.kv.CompareAndExpire(ctx, key, old, ttl) })
	return
}

func (c *client) CompareAndSwap(ctx context.Context, key string, old, value []byte, ttl time.Duration) (ok bool, err error) {
	err = c.do(ctx, func() { ok, _ = c.kv.CompareAndSwap(ctx, key, old, value, ttl) })
	return
}

func (c *client) Increment(ctx context.Context, key string) (n uint64, err error) {
	err = c.do(ctx, func() { n, _ = c.kv.Increment(ctx, key) })
	return
}

func (c *client) Get(ctx context.Context, key string) (v []byte, rem time.Duration, found bool, err error) {
	err = c.do(ctx, func() { v, rem, found, _ = c.kv.Get(ctx, key) })
	return
}

// Ping is a health check, not a lock operation: faults never touch it.
func (c *client) Ping(ctx context.Context) error { return c.kv.Ping(ctx) }

// Watch is background traffic: faults never touch it.
func (c *client) Watch(ctx context.Context, key string, changed func()) (func(), error) {
	return c.kv.Watch(ctx, key, changed)
}

// polling hides the client's Watch, so the Locker is no lock.Notifier.
type polling struct{ kvlock.KV }

// newBackend returns a Backend with a client of its own on srv, closed when
// t ends, and the client's faults.
func newBackend(t *testing.T, srv *memKV, watch bool) (kvlock.Backend, *client) {
	c := newClient(t, srv)
	var kv kvlock.KV = c
	if !watch {
		kv = polling{c}
	}
	b, err := kvlock.New(kv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b, c
}

func config(watch bool) conformance.Config {
	srv := newMemKV()
	return conformance.Config{
		NewLocker: func(t *testing.T) lock.Locker { b, _ := newBackend(t, srv, watch); return b },
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			return newBackend(t, srv, watch)
		},
		TTLGranularity: time.Millisecond,
	}
}

func TestConformance(t *testing.T) { conformance.Run(t, config(true)) }

func TestConformancePolling(t *testing.T) { conformance.Run(t, config(false)) }

func TestStoreConformance(t *testing.T) {
	srv := newMemKV()
	conformance.RunStore(t, conformance.StoreConfig{
		NewStore: func(t *testing.T) idempotency.Store { b, _ := newBackend(t, srv, true); return b },
		NewFaultyStore: func(t *testing.T) (idempotency.Store, conformance.Faults) {
			return newBackend(t, srv, true)
		},
		TTLGranularity: time.Millisecond,
	})
}

func TestNotifierOnlyWithWatcher(t *testing.T) {
	srv := newMemKV()
	if b, _ := newBackend(t, srv, true); !isNotifier(b) {
		t.Errorf("a Backend on a KV with Watch is not a lock.Notifier")
	}
	if b, _ := newBackend(t, srv, false); isNotifier(b) {
		t.Errorf("a Backend on a KV without Watch is a lock.Notifier")
	}
}

func isNotifier(l lock.Locker) bool { _, ok := l.(lock.Notifier); return ok }

// lossy loses the lock key between the take's Create and its Increment, as
// when it expires and another process takes it.
type lossy struct {
	*client
	between func()
}

func (l lossy) Increment(ctx context.Context, key string) (uint64, error) {
	l.between()
	return l.client.Increment(ctx, key)
}

// TestTokenDrawnWhileHolding: a take that loses its key before the token is
// drawn must fail, or its token could be greater than that of the holder
// who took the key in between and is still holding it.
func TestTokenDrawnWhileHolding(t *testing.T) {
	srv := newMemKV()
	ctx := t.Context()
	other, _ := newBackend(t, srv, true)
	var theirs lock.Lease
	b, err := kvlock.New(lossy{newClient(t, srv), func() {
		srv.mu.Lock()
		for k := range srv.entries {
			delete(srv.entries, k) // the take's key expires…
		}
		srv.mu.Unlock()
		var err error
		if theirs, err = other.TryAcquire(ctx, "k", time.Minute); err != nil { // …and is taken
			t.Errorf("TryAcquire of the free key: %v", err)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	le, err := b.TryAcquire(ctx, "k", time.Minute)
	if !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("a take that lost its key before drawing its token: got (%v, %v), want ErrNotAcquired", le, err)
	}
	if theirs == nil {
		t.Fatal("the other take failed")
	}
	if err := theirs.Release(ctx); err != nil {
		t.Errorf("the holder's Release: %v", err)
	}
}

// TestLostTakeUndone: a take whose reply was lost is undone at once, so
// the key is free when TryAcquire returns.
func TestLostTakeUndone(t *testing.T) {
	srv := newMemKV()
	b, f := newBackend(t, srv, true)
	other, _ := newBackend(t, srv, true)
	f.LoseNextReply()
	if _, err := b.TryAcquire(t.Context(), "k", time.Hour); !errors.Is(err, testenv.ErrLostReply) {
		t.Fatalf("TryAcquire whose reply was lost: got %v, want the transport's error", err)
	}
	le, err := other.TryAcquire(t.Context(), "k", time.Hour)
	if err != nil {
		t.Fatalf("the key after a take whose reply was lost: %v; the take was not undone", err)
	}
	_ = le.Release(t.Context())
}

// TestCancelledTakeUndoneByClose: a take whose context ended mid-flight is
// undone in the background, and Close waits for it.
func TestCancelledTakeUndoneByClose(t *testing.T) {
	srv := newMemKV()
	c := newClient(t, srv)
	c.appliedStall = true
	b, err := kvlock.New(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	c.StallNextRequest()
	time.AfterFunc(10*time.Millisecond, cancel) // the cancellation under test
	if _, err := b.TryAcquire(ctx, "k", time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("TryAcquire cancelled mid-flight: got %v, want context.Canceled", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	other, _ := newBackend(t, srv, true)
	le, err := other.TryAcquire(t.Context(), "k", time.Hour)
	if err != nil {
		t.Fatalf("the key after Close: %v", err)
	}
	_ = le.Release(t.Context())
}

// otherLease is a Lease type kvlock did not make.
type otherLease struct{ lock.Lease }

func TestCompleteForeignLease(t *testing.T) {
	b, _ := newBackend(t, newMemKV(), true)
	other, _ := newBackend(t, newMemKV(), true)
	theirs, err := other.TryAcquire(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, le := range []lock.Lease{nil, (*otherLease)(nil), &otherLease{}, theirs} {
		if err := b.Complete(t.Context(), le, []byte("r"), time.Minute); !errors.Is(err, lock.ErrInvalidArgument) {
			t.Errorf("Complete(%#v): got %v, want ErrInvalidArgument", le, err)
		}
	}
}

// Without kvlock.Reader the Admin methods say so with a typed error.
func TestAdminNeedsReader(t *testing.T) {
	b, _ := newBackend(t, newMemKV(), false)
	a := b.(lock.Admin)
	if _, err := a.Inspect(t.Context(), "k"); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Inspect on a KV without Get: %v, want errors.ErrUnsupported", err)
	}
	if err := a.ForceRelease(t.Context(), "k"); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("ForceRelease on a KV without Get: %v, want errors.ErrUnsupported", err)
	}
	if err := lock.Ping(t.Context(), b); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Ping on a KV without Ping: %v, want errors.ErrUnsupported", err)
	}
}

// Issue 21.4: a KV tells a holder nothing, so it learns of a ForceRelease
// at its next refresh: within the refresh interval (a third of the TTL).
func TestLossDetection(t *testing.T) {
	ttl := lock.DefaultTTL
	b, _ := newBackend(t, newMemKV(), true)
	testenv.LossDetection(t, b, "k", ttl, ttl/3+conformance.SchedulingSlack)
}

// New reports a nil KV at construction.
func TestNewNilKV(t *testing.T) {
	if b, err := kvlock.New(nil); !errors.Is(err, lock.ErrInvalidArgument) || b != nil {
		t.Errorf("New(nil) = (%v, %v), want an error matching lock.ErrInvalidArgument", b, err)
	}
}
