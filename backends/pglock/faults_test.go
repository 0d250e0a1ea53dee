package pglock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/pglock"
)

// TestServerRestart restarts a private server under held leases and a
// waiter: the rows survive, the pool reconnects, the listening connection
// comes back, and tokens keep increasing (a clean shutdown and a crash).
func TestServerRestart(t *testing.T) {
	s := privateServer(t)
	l, other := newLocker2(t, s.URL())
	ctx := t.Context()
	for _, mode := range []string{"fast", "immediate"} {
		t.Run(mode, func(t *testing.T) {
			key := "restart/" + mode
			le, err := l.TryAcquire(ctx, key, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			s.restart(t, mode)
			// Connections broke; a lease statement may fail once per
			// broken pooled connection, never with ErrNotHeld.
			retry(t, "Refresh after the restart", func() error { return le.Refresh(ctx, time.Minute) })
			_, err = other.TryAcquire(ctx, key, time.Minute)
			if !errors.Is(err, lock.ErrNotAcquired) {
				// The first statement on a broken pooled connection fails.
				_, err = other.TryAcquire(ctx, key, time.Minute)
			}
			if !errors.Is(err, lock.ErrNotAcquired) {
				t.Fatalf("take of a key held across a restart: %v", err)
			}
			// A waiter subscribed after the restart wakes on the release.
			got := make(chan lock.Lease, 1)
			go func() {
				le2, err := lock.Acquire(ctx, other, key, time.Minute)
				if err != nil {
					t.Errorf("Acquire after the restart: %v", err)
				}
				got <- le2
			}()
			waitForWaiter(t, s.URL(), l, key)
			released := time.Now()
			retry(t, "Release after the restart", func() error { return le.Release(ctx) })
			le2 := <-got
			if le2 == nil {
				return
			}
			if d := time.Since(released); d > 2*time.Second {
				t.Errorf("the waiter took the key %v after the release", d)
			}
			if le2.Token() <= le.Token() {
				t.Errorf("token %d after the restart, not greater than %d before it", le2.Token(), le.Token())
			}
			_ = le2.Release(ctx)
		})
	}
}

// TestServerPaused pauses a private server: calls honour their contexts'
// deadlines, and after the server resumes the lease is what the server
// says it is.
func TestServerPaused(t *testing.T) {
	s := privateServer(t)
	l, other := newLocker2(t, s.URL())
	ctx := t.Context()
	le, err := l.TryAcquire(ctx, "paused", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s.pause(t)
	for _, op := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Refresh", func(ctx context.Context) error { return le.Refresh(ctx, time.Minute) }},
		{"TryAcquire", func(ctx context.Context) error { _, err := other.TryAcquire(ctx, "paused", time.Minute); return err }},
	} {
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		start := time.Now()
		err := op.call(cctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s on a paused server: %v, want an error matching context.DeadlineExceeded", op.name, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s on a paused server returned after %v, its deadline was 200ms", op.name, d)
		}
	}
	time.Sleep(2 * time.Second) // past the lease's TTL, by the paused server's clock too
	s.resume(t)
	// The refresh never ran, or ran too late: either way the server's
	// answer is the truth, and a second lease can take the key.
	le2, err := lock.Acquire(ctx, other, "paused", time.Minute, lock.WithBackoff(time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatalf("Acquire after the pause: %v", err)
	}
	if err := le.Refresh(ctx, time.Minute); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh of the expired lease after the pause: %v, want ErrNotHeld", err)
	}
	if err := le2.Release(ctx); err != nil {
		t.Error(err)
	}
}

// TestConnectionsReset terminates every connection of a Locker on the
// server, its listening connection included: leases keep working after at
// most one failed statement per pooled connection, and a waiter still
// takes the key after the release (woken, or polling while the listening
// connection comes back).
func TestConnectionsReset(t *testing.T) {
	s := privateServer(t)
	l, other := newLocker2(t, s.URL())
	admin := newPool(t, s.URL(), nil)
	ctx := t.Context()
	le, err := l.TryAcquire(ctx, "reset", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan lock.Lease, 1)
	go func() {
		le2, err := lock.Acquire(ctx, other, "reset", time.Minute)
		if err != nil {
			t.Errorf("Acquire across the reset: %v", err)
		}
		got <- le2
	}()
	waitForWaiter(t, s.URL(), l, "reset")
	var n int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n < 2 {
		t.Fatalf("terminated %d connections, want the Lockers' and the listening one", n)
	}
	retry(t, "Refresh after the reset", func() error { return le.Refresh(ctx, time.Minute) })
	released := time.Now()
	retry(t, "Release after the reset", func() error { return le.Release(ctx) })
	select {
	case le2 := <-got:
		if le2 != nil {
			t.Logf("the waiter took the key %v after the release", time.Since(released))
			_ = le2.Release(ctx)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not take the key 10s after the release")
	}
}

// newLocker2 returns two independent Lockers on rawURL.
func newLocker2(t *testing.T, rawURL string) (*pglock.Locker, *pglock.Locker) {
	l, _ := newLockerOn(t, rawURL)
	other, _ := newLockerOn(t, rawURL)
	return l, other
}

// retry runs op until it succeeds, at most three times: each failure must
// be a broken connection, never ErrNotHeld.
func retry(t *testing.T, what string, op func() error) {
	t.Helper()
	var err error
	for range 3 {
		if err = op(); err == nil {
			return
		}
		if errors.Is(err, lock.ErrNotHeld) || errors.Is(err, lock.ErrNotAcquired) {
			break
		}
	}
	t.Fatalf("%s: %v", what, err)
}

// waitForWaiter polls the server until a failed take has marked key's row
// as waited for: the waiter is then subscribed (Acquire subscribes before
// its second attempt) and its release will notify.
func waitForWaiter(t *testing.T, rawURL string, l *pglock.Locker, key string) {
	t.Helper()
	pool := newPool(t, rawURL, nil)
	waitFor(t, fmt.Sprintf("a waiter on %q", key), 10*time.Second, func() bool {
		var waited bool
		err := pool.QueryRow(t.Context(), "SELECT waiters FROM "+pglock.DefaultTable+" WHERE key = $1", []byte(key)).Scan(&waited)
		return err == nil && waited
	})
}
