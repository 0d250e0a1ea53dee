package pglock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/internal/testenv"
)

// The three outcomes of every statement, driven by the wire faults: a
// reply lost after the server applied the request, and a request that
// never gets an answer (cancelled by the caller's context).

// notLockError asserts that err is an error that claims neither outcome.
func notLockError(t *testing.T, op string, err error) {
	t.Helper()
	if err == nil || errors.Is(err, lock.ErrNotHeld) || errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("%s with a lost reply: %v, want an error matching neither ErrNotHeld nor ErrNotAcquired", op, err)
	}
}

func TestLostReplies(t *testing.T) {
	url := postgresURL(t)
	ctx := t.Context()
	prefix := "lost/" + testTable(t) + "/"

	t.Run("Take", func(t *testing.T) {
		l, w := newLockerOn(t, url)
		other := newLocker(t)
		key := prefix + "take"
		w.LoseNextReply()
		const ttl = 300 * time.Millisecond
		sent := time.Now()
		_, err := l.TryAcquire(ctx, key, ttl)
		notLockError(t, "TryAcquire", err)
		// The take happened: the key is held by a lease nobody has, until
		// its TTL runs out. A probe answered after that (a loaded machine
		// may send it late) proves nothing.
		probe, err := other.TryAcquire(ctx, key, time.Minute)
		if err == nil {
			_ = probe.Release(ctx)
			if answered := time.Now(); answered.Before(sent.Add(ttl)) {
				t.Fatalf("take after a lost take reply succeeded %v before the orphan's TTL could have run out", sent.Add(ttl).Sub(answered))
			}
			t.Skip("inconclusive: the probe was answered after the orphan's TTL could have run out")
		}
		var held *lock.NotAcquiredError
		if !errors.As(err, &held) || held.Remaining > 300*time.Millisecond {
			t.Fatalf("take after a lost take reply: %v, want held for at most 300ms", err)
		}
		le, err := lock.Acquire(ctx, other, key, time.Minute)
		if err != nil {
			t.Fatalf("Acquire after the orphan's TTL: %v", err)
		}
		if le.Token() <= held.Version {
			t.Errorf("token %d after the orphaned lease's %d", le.Token(), held.Version)
		}
		_ = le.Release(ctx)
	})

	t.Run("Refresh", func(t *testing.T) {
		l, w := newLockerOn(t, url)
		key := prefix + "refresh"
		le, err := l.TryAcquire(ctx, key, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		w.LoseNextReply()
		notLockError(t, "Refresh", le.Refresh(ctx, time.Minute))
		if err := le.Refresh(ctx, time.Minute); err != nil {
			t.Fatalf("Refresh again after a lost reply: %v", err)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Complete", func(t *testing.T) {
		l, w := newLockerOn(t, url)
		other := newLocker(t)
		key := prefix + "complete"
		le, _, err := l.Claim(ctx, key, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		w.LoseNextReply()
		notLockError(t, "Complete", l.Complete(ctx, le, []byte("first"), time.Minute))
		// The record was stored: the retry says so and stores nothing new.
		if err := l.Complete(ctx, le, []byte("first"), time.Minute); err != nil {
			t.Errorf("Complete again after a lost reply: %v, want success (the first one stored it)", err)
		}
		if _, rec, err := other.Claim(ctx, key, time.Minute); err != nil || string(rec) != "first" {
			t.Errorf("Claim after the completion = %q, %v", rec, err)
		}
		if err := l.Complete(ctx, le, []byte("second"), time.Minute); !errors.Is(err, lock.ErrNotHeld) {
			t.Errorf("a third Complete: %v, want ErrNotHeld", err)
		}
	})
}

func TestStalledRequests(t *testing.T) {
	url := postgresURL(t)
	prefix := "stall/" + testTable(t) + "/"
	l, w := newLockerOn(t, url)
	ctx := t.Context()
	stalled := w.Stalled()
	le, err := l.TryAcquire(ctx, prefix+"k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"TryAcquire", func(ctx context.Context) error { _, err := l.TryAcquire(ctx, prefix+"other", time.Minute); return err }},
		{"Refresh", func(ctx context.Context) error { return le.Refresh(ctx, time.Minute) }},
		{"Release", func(ctx context.Context) error { return le.Release(ctx) }},
	} {
		t.Run(op.name, func(t *testing.T) {
			w.StallNextRequest()
			cctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- op.call(cctx) }()
			select {
			case <-stalled:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s sent no request in 10s", op.name)
			}
			start := time.Now() // the cancel: what came before it is not under test
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("%s cancelled in flight: %v, want an error matching context.Canceled", op.name, err)
				}
				if d := time.Since(start); d > time.Second {
					t.Errorf("%s returned %v after the cancel", op.name, d)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s did not return 10s after its context was cancelled", op.name)
			}
		})
	}
	// The stalled Release never reached the server: the lease still holds.
	if err := le.Release(ctx); err != nil {
		t.Errorf("Release after a stalled one: %v", err)
	}
}

// TestLoseReleaseReply is the common lost-release scenario: pglock keeps
// no evidence of its own release, so a retried Release reports ErrNotHeld.
func TestLoseReleaseReply(t *testing.T) {
	a, w := newLockerOn(t, postgresURL(t))
	testenv.LoseReleaseReply(t, a, w.FaultSwitch, newLocker(t), "lost-release/"+testTable(t), 5*time.Second, false)
}

// TestRaceLeaseCalls runs Refresh and Release of one lease at once.
func TestRaceLeaseCalls(t *testing.T) {
	testenv.RaceLeaseCalls(t, newLocker(t), newLocker(t), "race/"+testTable(t), 10*time.Second, 50)
}
