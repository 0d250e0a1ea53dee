package consullock_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/consullock"
	"github.com/idemlock/lock/internal/testenv"
)

// Adversarial: a head's take whose reply is lost (applied) marks its entry;
// the ticket then retries as lock.Acquire does while a ticket of another
// Locker waits behind it. The retry must not lose the head's place, nor
// let the ticket behind delete the head's re-queued entry, and both must
// get the key, one after the other.
func TestAdvTakeReplyLostRetry(t *testing.T) {
	admin, pfx := advStart(t)
	q := queueTwo(t, admin, pfx, true)
	k, faults, a, b := q.k, q.faults, q.a, q.b
	awaitReady(t, a)
	faults.LoseNextReply()
	if _, err := a.TryAcquire(t.Context(), time.Minute); err == nil || errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("a take whose reply was lost: %v, want an error of unknown outcome", err)
	}
	// Both retry as lock.Acquire does, each releasing at once: both must
	// get the key (no waiter stranded), one at a time.
	order := make(chan string, 2)
	var holding atomic.Int32
	var wg sync.WaitGroup
	for name, tk := range map[string]lock.Ticket{"a": a, "b": b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := takeTurnNoFatal(t, tk)
			if got == nil {
				return
			}
			if holding.Add(1) != 1 {
				t.Errorf("%s holds the key with another", name)
			}
			order <- name
			holding.Add(-1)
			if err := got.Release(context.Background()); err != nil {
				t.Errorf("%s release: %v", name, err)
			}
		}()
	}
	wg.Wait()
	close(order)
	var seq []string
	for n := range order {
		seq = append(seq, n)
	}
	t.Logf("order after a's lost take: %v (a was ahead)", seq)
	if len(seq) != 2 {
		t.Fatalf("only %v got the key", seq)
	}
	_ = a.Close()
	_ = b.Close()
	emptyQueue(t, admin, pfx, k, "at the end")
}

// Adversarial: a queued lease that expires with nobody waiting leaves its
// marked entry; a waiter arriving later on another Locker must take at
// once and delete it, and the expired lease's Release must report
// ErrNotHeld and leave nothing behind.
func TestAdvExpiredLeaseNoWaiter(t *testing.T) {
	admin, pfx := advStart(t)
	k, le := heldKey(t)
	la, _ := newLocker(t, consullock.WithQueue())
	a := queuedTicket(t, la, k)
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	awaitReady(t, a)
	short, err := a.TryAcquire(t.Context(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for holder(t, admin, k) != "" { // the session's expiry sends no event to this test
		if time.Now().After(deadline) {
			t.Fatal("the short lease never expired")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := queueLen(t, admin, pfx, k); n != 0 {
		t.Errorf("%d waiters counted after the lease expired, want 0 (the marked entry is no waiter)", n)
	}
	lc, _ := newLocker(t, consullock.WithQueue())
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	got, err := lock.Acquire(ctx, lc, k, time.Minute)
	if err != nil {
		t.Fatalf("a late waiter behind an expired queued lease: %v", err)
	}
	if es := queueEntries(t, admin, pfx, k); len(es) > 1 {
		t.Errorf("the queue holds %d entries while c holds, want at most 1", len(es))
	}
	releaseExpired(t, short)
	if err := got.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	emptyQueue(t, admin, pfx, k, "after the release")
}

// Adversarial: the release of a queued lease whose reply is lost (applied:
// the lock key and the marked entry are gone). The waiter behind must get
// the key, a second Release must not report success-then-failure wrongly
// nor touch the next holder's entry.
func TestAdvQueuedReleaseReplyLost(t *testing.T) {
	admin, pfx := advStart(t)
	q := queueTwo(t, admin, pfx, true)
	k, faults, a, b := q.k, q.faults, q.a, q.b
	ga := takeTurn(t, a)
	faults.LoseNextReply()
	if err := ga.Release(t.Context()); err == nil {
		t.Fatalf("a release whose reply was lost reported success")
	}
	gb := takeTurn(t, b)
	if es := queueEntries(t, admin, pfx, k); len(es) != 1 {
		t.Errorf("the queue holds %d entries while b holds, want 1 (b's)", len(es))
	}
	err := ga.Release(t.Context())
	t.Logf("a's second release: %v", err)
	if es := queueEntries(t, admin, pfx, k); len(es) != 1 {
		t.Errorf("the queue holds %d entries after a's second release, want 1 (b's)", len(es))
	}
	if h := holder(t, admin, k); h == "" {
		t.Errorf("b's key was freed by a's second release")
	}
	if err := gb.Release(t.Context()); err != nil {
		t.Fatalf("b's release: %v", err)
	}
	emptyQueue(t, admin, pfx, k, "after b's release")
}

// Adversarial: Complete of a queued lease (done, and reply lost) deletes
// its marked entry with the lock key, and the waiter behind gets the key.
func TestAdvQueuedComplete(t *testing.T) {
	admin, pfx := advStart(t)
	for _, lose := range []bool{false, true} {
		q := queueTwo(t, admin, pfx, true)
		k, la, faults, a, b := q.k, q.la, q.faults, q.a, q.b
		ga := takeTurn(t, a)
		if lose {
			faults.LoseNextReply()
		}
		err := la.Complete(t.Context(), ga, []byte("done"), time.Minute)
		if !lose && err != nil {
			t.Fatalf("Complete: %v", err)
		}
		t.Logf("lose=%v Complete: %v", lose, err)
		if lose {
			// The outcome is unknown: settle it as a caller would.
			if err := la.Complete(t.Context(), ga, []byte("done"), time.Minute); !errors.Is(err, lock.ErrNotHeld) {
				t.Errorf("Complete again after a lost reply: %v, want ErrNotHeld", err)
			}
		}
		gb := takeTurn(t, b)
		if es := queueEntries(t, admin, pfx, k); len(es) != 1 {
			t.Errorf("lose=%v: the queue holds %d entries while b holds, want 1 (b's)", lose, len(es))
		}
		if err := gb.Release(t.Context()); err != nil {
			t.Fatalf("b's release: %v", err)
		}
		emptyQueue(t, admin, pfx, k, fmt.Sprintf("after b's release (lose=%v)", lose))
	}
}

// Adversarial: a's take of unknown outcome (applied: a's entry marked, the
// key held by the doomed session) lets b's Locker conclude from the mark
// that b is the head. The doomed session frees the key, an unqueued
// Locker takes it, and a queues again. Locking its old entry again would
// unmark it and give it back its place ahead of b, which b's Locker has
// already passed: b would then take while a waiting entry is ahead of it
// and delete it. a must queue under a new name instead (behind b), its old
// entry must go, and no take may happen while a waiting entry is ahead of
// the taker's. (Failed on the code before the fix: b took with a's old
// entry waiting ahead of it.)
func TestAdvLostTakeRequeueVsMarkedHead(t *testing.T) {
	admin, pfx := advStart(t)
	q := queueTwo(t, admin, pfx, true)
	k, faults, a, b := q.k, q.faults, q.a, q.b
	awaitReady(t, a)
	faults.LoseNextReply()
	if _, err := a.TryAcquire(t.Context(), time.Minute); err == nil || errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("a take whose reply was lost: %v, want an error of unknown outcome", err)
	}
	plain, _ := newLocker(t)
	var u lock.Lease
	deadline := time.Now().Add(10 * time.Second)
	for u == nil {
		got, err := plain.TryAcquire(t.Context(), k, time.Minute)
		if err == nil {
			u = got
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the unqueued take never got the key freed by the doomed session: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // the doomed session's destroy sends this test no event
	}
	if _, err := a.TryAcquire(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("a's retry while u holds: %v, want ErrNotAcquired", err)
	}
	for _, e := range queueEntries(t, admin, pfx, k) {
		t.Logf("entry %s create %d flags %d", e.Key, e.CreateIndex, e.Flags)
	}
	if n := queueLen(t, admin, pfx, k); n != 2 {
		t.Logf("waiters after a queued again: %d", n)
	}
	if err := u.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Every waiting entry must be behind b's now: a's old one is gone, and
	// a waits under a new name, queued after b.
	var bIdx uint64
	for _, e := range queueEntries(t, admin, pfx, k) {
		if e.Flags == 0 && (bIdx == 0 || e.CreateIndex < bIdx) {
			bIdx = e.CreateIndex // the earliest waiting entry: b's
		}
	}
	gb := takeTurn(t, b)
	for _, e := range queueEntries(t, admin, pfx, k) {
		if e.Flags == 0 && e.CreateIndex < bIdx {
			t.Errorf("b took the key while entry %s (create %d) waited ahead of it", e.Key, e.CreateIndex)
		}
	}
	if n := queueLen(t, admin, pfx, k); n != 1 {
		t.Errorf("waiters while b holds: %d, want 1 (a, queued again)", n)
	}
	if err := gb.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	_ = takeTurn(t, a).Release(t.Context())
	_ = a.Close()
	_ = b.Close()
	emptyQueue(t, admin, pfx, k, "at the end")
}

// Adversarial: the head is woken with the key free and then leaves
// (Close, as a cancelled Acquire does): the waiter behind on another
// Locker must get the key promptly.
func TestAdvWokenHeadLeaves(t *testing.T) {
	admin, pfx := advStart(t)
	q := queueTwo(t, admin, pfx, false)
	k, a, b := q.k, q.a, q.b
	awaitReady(t, a)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	got := takeTurn(t, b)
	if err := got.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	emptyQueue(t, admin, pfx, k, "at the end")
}

// Adversarial: a ticket whose lease expired is used again while b waits
// behind the expired lease's marked entry: b must get the key (woken by
// the expiry), the reused ticket queues behind b, gets the key after b,
// and no entry is left.
func TestAdvReusedTicketAfterExpiry(t *testing.T) {
	admin, pfx := advStart(t)
	q := queueTwo(t, admin, pfx, false)
	k, a, b := q.k, q.a, q.b
	awaitReady(t, a)
	short, err := a.TryAcquire(t.Context(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// a queues again at once, while short still holds.
	var held *lock.NotAcquiredError
	if _, err := a.TryAcquire(t.Context(), time.Minute); !errors.As(err, &held) {
		t.Fatalf("a's second take while its first lease holds: %v", err)
	}
	gb := takeTurn(t, b) // after short's expiry
	if _, err := a.TryAcquire(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("a while b holds: %v, want ErrNotAcquired", err)
	}
	if err := gb.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	ga := takeTurn(t, a)
	releaseExpired(t, short)
	if n := queueEntries(t, admin, pfx, k); len(n) != 1 {
		t.Errorf("the queue holds %d entries while a holds again, want 1 (the expired lease's release must not delete a's new one)", len(n))
	}
	if err := ga.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	emptyQueue(t, admin, pfx, k, "at the end")
}

// Adversarial: the queued holder's Locker is closed while its lease holds
// (the queue session goes, and the marked entry with it); the waiter
// behind on another Locker must still wait for the lease, and get the key
// when it is released after the Close.
func TestAdvHolderLockerClosed(t *testing.T) {
	admin, pfx := advStart(t)
	q := queueTwo(t, admin, pfx, false)
	k, la, a, b := q.k, q.la, q.a, q.b
	ga := takeTurn(t, a)
	_ = a.Close()
	if err := la.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.TryAcquire(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("b while a holds after its Locker closed: %v, want ErrNotAcquired", err)
	}
	if err := ga.Release(t.Context()); err != nil {
		t.Fatalf("the release after the Locker's Close: %v", err)
	}
	gb := takeTurn(t, b)
	if err := gb.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	emptyQueue(t, admin, pfx, k, "at the end")
}

// twoQueued is the start of most adversarial tests: a key k held by an
// unqueued lease, ticket a of la and then ticket b of lb queued behind it,
// and the holder's release. la loses replies on demand (faults) when
// faulty is set.
type twoQueued struct {
	k      string
	la, lb *consullock.Locker
	faults *testenv.FaultSwitch
	a, b   lock.Ticket
}

func queueTwo(t *testing.T, admin *api.Client, pfx string, faulty bool) twoQueued {
	t.Helper()
	q := twoQueued{}
	var le lock.Lease
	q.k, le = heldKey(t)
	if faulty {
		q.la, q.faults, _ = newFaultyLocker(t, consullock.WithQueue())
	} else {
		q.la, _ = newLocker(t, consullock.WithQueue())
	}
	q.lb, _ = newLocker(t, consullock.WithQueue())
	q.a = queuedTicket(t, q.la, q.k)
	q.b = queuedTicket(t, q.lb, q.k)
	awaitQueueLen(t, admin, pfx, q.k, 2, 10*time.Second)
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	return q
}

// advStart begins an adversarial test: no session is left over from an
// earlier test, and it returns an admin client and the default prefix.
func advStart(t *testing.T) (*api.Client, string) {
	t.Helper()
	checkNoSessions(t)
	admin, _ := newClient(t)
	return admin, consullock.DefaultPrefix
}

// emptyQueue fails the test unless k's queue holds no entry (when says
// when, for the message).
func emptyQueue(t *testing.T, admin *api.Client, pfx, k, when string) {
	t.Helper()
	if es := queueEntries(t, admin, pfx, k); len(es) != 0 {
		t.Errorf("the queue holds %d entries %s, want 0: %v", len(es), when, es)
	}
}
