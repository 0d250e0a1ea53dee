package testenv

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
)

// QueueRetryAfterLostTake checks that a direct Ticket user who retries
// after a take whose reply was lost never strands the waiter queued behind
// it. holder (a queued Locker, so that its release wakes only the head)
// takes key for a minute; a ticket of faulty (whose fault switch is
// faults) queues first, and waiter's lock.Acquire queues behind it
// (queueLen reports how many waiters key's queue holds). After the
// release, the ticket's take, its reply lost, takes the key for a second
// with a lease nobody has. The ticket retries; with loseRetry the retry's
// reply is lost too and the ticket is then closed. Either way the waiter,
// whose wait is bounded by the holder's minute, must get the key within
// that second and a few more.
func QueueRetryAfterLostTake[N ~int | ~int64](t *testing.T, holder, faulty lock.Locker, faults *FaultSwitch, waiter lock.Locker, key string, queueLen func() N, loseRetry bool) {
	t.Helper()
	const lost = time.Second // the lost take's TTL
	held, err := holder.TryAcquire(t.Context(), key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	q, ok := faulty.(lock.Queuer)
	if !ok {
		t.Fatalf("%T is not a lock.Queuer", faulty)
	}
	tk, err := q.Queue(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tk.Close() }()
	// A TTL so short that a backend which hands the key to a fresh head
	// on release (pglock) only wakes this one: it takes the key itself.
	if _, err := tk.TryAcquire(t.Context(), time.Millisecond); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("a ticket's take of a held key: %v, want ErrNotAcquired", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	behind := make(chan error, 1)
	wg.Go(func() {
		le, err := lock.Acquire(ctx, waiter, key, time.Minute)
		if err == nil {
			err = le.Release(context.WithoutCancel(ctx))
		}
		behind <- err
	})
	AwaitQueueLen(t, queueLen, 2, 10*time.Second)
	if err := held.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	faults.LoseNextReply()
	if _, err := tk.TryAcquire(t.Context(), lost); err == nil || errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("the head's take whose reply was lost: %v, want an error of unknown outcome", err)
	}
	if loseRetry {
		faults.LoseNextReply()
	}
	le, err := tk.TryAcquire(t.Context(), lost)
	switch {
	case loseRetry && (err == nil || errors.Is(err, lock.ErrNotAcquired)):
		t.Fatalf("the retry whose reply was lost: %v, want an error of unknown outcome", err)
	case loseRetry:
		if err := tk.Close(); err != nil {
			t.Fatalf("Close after two attempts of unknown outcome: %v", err)
		}
	case err == nil:
		_ = le.Release(t.Context()) // the lost take was not applied after all
	case !errors.Is(err, lock.ErrNotAcquired):
		t.Fatalf("the retry of the take whose reply was lost: %v", err)
	}
	const within = lost + 5*time.Second
	select {
	case err := <-behind:
		if err != nil {
			t.Fatalf("the waiter behind the ticket: %v", err)
		}
	case <-time.After(within):
		t.Fatalf("the waiter behind the ticket did not get the key within %v, although the lost take's TTL is %v: nobody woke it, and it waits out the holder's minute", within, lost)
	}
}
