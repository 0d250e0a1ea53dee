package consullock_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/consullock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
)

// TestConformanceQueued runs the suite on Lockers that queue their waiters:
// the queue clauses (QueueOrder, QueueHeadGivesUp) run instead of skipping.
func TestConformanceQueued(t *testing.T) {
	checkNoSessions(t)
	cfg := suiteConfig()
	cfg.NewLocker = func(t *testing.T) lock.Locker { l, _ := newLocker(t, consullock.WithQueue()); return l }
	cfg.NewLockerTB = func(tb testing.TB) lock.Locker { l, _ := newLocker(tb, consullock.WithQueue()); return l }
	cfg.NewFaultyLocker = func(t *testing.T) (lock.Locker, conformance.Faults) {
		l, faults, _ := newFaultyLocker(t, consullock.WithQueue())
		return l, faults
	}
	conformance.Run(t, cfg)
}

// queueBound is how long after its process died a waiter may stay in the
// queue: its queue session (TTL max(session_ttl_min, 3s) = 3s on the test
// agent) is invalidated up to twice its TTL after its last renewal.
const queueBound = 2*3*time.Second + 2*time.Second

// queueLen returns how many waiters wait in the queue of key k.
func queueLen(t *testing.T, admin *api.Client, prefix, k string) int {
	t.Helper()
	n := 0
	for _, e := range queueEntries(t, admin, prefix, k) {
		if e.Flags != consullock.EntryTaken {
			n++
		}
	}
	return n
}

// queueEntries lists key k's queue entries, waiting or taken (kept until
// their lease ends).
func queueEntries(t *testing.T, admin *api.Client, prefix, k string) api.KVPairs {
	t.Helper()
	kvs, _, err := admin.KV().List(prefix+"queue/"+consullock.EscapeKey(k)+"/", nil)
	if err != nil {
		t.Fatalf("listing the queue of %q: %v", k, err)
	}
	return kvs
}

// awaitQueueLen polls the queue's length until it is n, failing after d.
func awaitQueueLen(t *testing.T, admin *api.Client, prefix, k string, n int, d time.Duration) {
	t.Helper()
	testenv.AwaitQueueLen(t, func() int { return queueLen(t, admin, prefix, k) }, n, d)
}

// Queue on a Locker without WithQueue reports errors.ErrUnsupported, and
// Acquire then waits unqueued.
func TestQueueOff(t *testing.T) {
	l, _ := newLocker(t)
	if _, err := l.Queue(t.Context(), "k"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Queue without WithQueue: %v, want errors.ErrUnsupported", err)
	}
}

// Waiters queued one after the other get the key in that order, and a
// hand-off costs a fixed number of requests: 32 waiters on 4 Lockers
// (unqueued, each release would wake every waiter left, and each would
// send a take: about 18 requests per hand-off on average here).
func TestQueueOrderAndCost(t *testing.T) {
	checkNoSessions(t)
	k := key(t, "k")
	admin, _ := newClient(t)
	holder, _ := newLocker(t)
	le, err := holder.TryAcquire(t.Context(), k, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const lockers, waiters = 4, 32
	ls := make([]*consullock.Locker, lockers)
	cs := make([]*counter, lockers)
	for i := range ls {
		ls[i], cs[i] = newLocker(t, consullock.WithQueue())
	}
	total := func() (n int) {
		for _, c := range cs {
			for _, v := range c.snapshot() {
				n += v
			}
		}
		return n
	}
	var (
		mu    sync.Mutex
		order []int
		wg    sync.WaitGroup
		held  atomic.Int32
	)
	for i := range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := lock.Acquire(t.Context(), ls[i%lockers], k, time.Minute)
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			if held.Add(1) != 1 {
				t.Errorf("waiter %d holds the key with another: mutual exclusion broken", i)
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			held.Add(-1)
			if err := got.Release(context.Background()); err != nil {
				t.Errorf("waiter %d release: %v", i, err)
			}
		}()
		awaitQueueLen(t, admin, consullock.DefaultPrefix, k, i+1, 30*time.Second)
	}
	before := total()
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	per := float64(total()-before) / waiters
	for i, w := range order {
		if w != i {
			t.Fatalf("waiters got the key in the order %v, want the order they queued in", order)
		}
	}
	t.Logf("%.1f requests per hand-off with %d waiters on %d Lockers", per, waiters, lockers)
	if per > 8 {
		t.Errorf("%.1f requests per hand-off with %d waiters, want at most 8 (a release must wake only the head)", per, waiters)
	}
	awaitQueueLen(t, admin, consullock.DefaultPrefix, k, 0, time.Second)
}

// The Locker behind the head learns from the head's take that its ticket
// is the head now and at which index the key was taken: it follows the
// lock key with one blocking query and then takes, reading nothing in
// between (it used to read the lock key first to learn whether the entry
// ahead had left by taking).
func TestQueueNextHeadLearnsFromTake(t *testing.T) {
	checkNoSessions(t)
	admin, _ := newClient(t)
	k, le := heldKey(t)
	la, _ := newLocker(t, consullock.WithQueue())
	lb, cb := newLocker(t, consullock.WithQueue())
	a := queuedTicket(t, la, k)
	b := queuedTicket(t, lb, k)
	awaitQueueLen(t, admin, consullock.DefaultPrefix, k, 2, 10*time.Second)
	// b's Locker follows a's entry: one blocking query, sent after b queued.
	awaitCount(t, cb, "kv", 1)
	before := cb.snapshot()
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := takeTurn(t, a)
	// a's take wakes b's Locker, whose next request follows the lock key.
	awaitCount(t, cb, "kv", before["kv"]+1)
	if err := got.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	gb := takeTurn(t, b)
	d := diff(before, cb.snapshot())
	if d["kv"] != 1 || d["txn"] != 1 {
		t.Errorf("the next head's Locker sent %v from the head's take to its own, want kv 1 (the lock key's blocking query) and txn 1 (the take)", d)
	}
	if gb.Token() <= got.Token() {
		t.Errorf("token %d after %d: fencing broken", gb.Token(), got.Token())
	}
	if err := gb.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if es := queueEntries(t, admin, consullock.DefaultPrefix, k); len(es) != 0 {
		t.Errorf("the queue holds %d entries after both releases, want 0", len(es))
	}
}

// A ticket used again after its take queues anew (behind the others, under
// a new entry) while its lease holds: the lease's release deletes only the
// entry its take marked, never the ticket's new one.
func TestQueueTicketUsedAgain(t *testing.T) {
	checkNoSessions(t)
	admin, _ := newClient(t)
	pfx := consullock.DefaultPrefix
	k := key(t, "k")
	l, _ := newLocker(t, consullock.WithQueue())
	tk, err := l.Queue(t.Context(), k)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tk.Close() })
	first, err := tk.TryAcquire(t.Context(), time.Minute)
	if err != nil {
		t.Fatalf("a ticket's take of a free key: %v", err)
	}
	if _, err := tk.TryAcquire(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("the same ticket's take while its first lease holds: %v, want ErrNotAcquired", err)
	}
	if n := queueLen(t, admin, pfx, k); n != 1 {
		t.Fatalf("the queue holds %d waiters after the ticket queued again, want 1", n)
	}
	if err := first.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := queueLen(t, admin, pfx, k); n != 1 {
		t.Fatalf("the queue holds %d waiters after the first lease's release, want 1 (the release deletes only its own entry)", n)
	}
	second := takeTurn(t, tk)
	if second.Token() <= first.Token() {
		t.Errorf("token %d after %d: fencing broken", second.Token(), first.Token())
	}
	if err := second.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A lease that ends without a release (it expired) leaves its marked
// entry, and the take of the ticket behind it deletes it: the queue keeps
// no leftover of it, and the next head was woken by the expiry.
func TestQueueExpiredLeaseEntry(t *testing.T) {
	checkNoSessions(t)
	admin, _ := newClient(t)
	pfx := consullock.DefaultPrefix
	k, le := heldKey(t)
	la, _ := newLocker(t, consullock.WithQueue())
	lb, _ := newLocker(t, consullock.WithQueue())
	a := queuedTicket(t, la, k)
	b := queuedTicket(t, lb, k)
	awaitQueueLen(t, admin, pfx, k, 2, 10*time.Second)
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	awaitReady(t, a)
	short, err := a.TryAcquire(t.Context(), time.Second)
	if err != nil {
		t.Fatalf("the head's take: %v", err)
	}
	// short is never refreshed: its session expires, which frees the key
	// and wakes b's Locker, following the lock key since a's take.
	got := takeTurn(t, b)
	if got.Token() <= short.Token() {
		t.Errorf("token %d after %d: fencing broken", got.Token(), short.Token())
	}
	if es := queueEntries(t, admin, pfx, k); len(es) != 1 {
		t.Errorf("the queue holds %d entries while b holds, want 1 (b's own; its take deletes the expired lease's entry)", len(es))
	}
	releaseExpired(t, short)
	if err := got.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if es := queueEntries(t, admin, pfx, k); len(es) != 0 {
		t.Errorf("the queue holds %d entries after the release, want 0", len(es))
	}
}

// awaitCount waits until c counted at least n requests to endpoint ep,
// failing after 10s (the requests are sent by a Locker's background loop,
// which offers no event to wait for).
func awaitCount(t *testing.T, c *counter, ep string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.snapshot()[ep] < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d %s requests after 10s, want %d", c.snapshot()[ep], ep, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestQueuedChild is the child process of TestQueueKilledWaiterExpires: a
// waiter that queues on a key and waits until it is killed. Its argument is
// the key.
func TestQueuedChild(t *testing.T) {
	k, ok := testenv.ChildArg()
	if !ok {
		return
	}
	l, _ := newLocker(t, consullock.WithQueue())
	_, err := lock.Acquire(t.Context(), l, k, time.Minute)
	t.Fatalf("the child's Acquire returned (%v): it should have been killed while waiting", err)
}

// A waiter whose process is killed while queued (SIGKILL: it never leaves)
// loses its entry with its Locker's queue session: the waiter behind it
// gets the key at most queueBound after the kill, although the holder
// released long before.
func TestQueueKilledWaiterExpires(t *testing.T) {
	checkNoSessions(t)
	k := key(t, "k")
	admin, _ := newClient(t)
	holder, _ := newLocker(t)
	le, err := holder.TryAcquire(t.Context(), k, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	child := testenv.StartChild(t, "TestQueuedChild", k)
	child.Await(t, "queued", func() bool { return queueLen(t, admin, consullock.DefaultPrefix, k) == 1 })
	waiter, _ := newLocker(t, consullock.WithQueue())
	behind := testenv.StartBehind(t, waiter, k)
	awaitQueueLen(t, admin, consullock.DefaultPrefix, k, 2, 10*time.Second)
	child.Kill(t)
	killed := time.Now()
	if err := le.Release(t.Context()); err != nil { // the dead head is ahead
		t.Fatal(err)
	}
	behind.AwaitKey(t, killed, "the kill", queueBound+6*conformance.SchedulingSlack)
	awaitQueueLen(t, admin, consullock.DefaultPrefix, k, 0, time.Second)
}

// heldKey returns a key of the test held by an unqueued Locker for a
// minute, and the lease.
func heldKey(t *testing.T) (string, lock.Lease) {
	t.Helper()
	k := key(t, "k")
	holder, _ := newLocker(t)
	le, err := holder.TryAcquire(t.Context(), k, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = le.Release(context.Background()) })
	return k, le
}

// queuedTicket returns a ticket of l on k that has queued behind a holder.
func queuedTicket(t *testing.T, l *consullock.Locker, k string) lock.Ticket {
	t.Helper()
	tk, err := l.Queue(t.Context(), k)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tk.Close() })
	var held *lock.NotAcquiredError
	if _, err := tk.TryAcquire(t.Context(), time.Minute); !errors.As(err, &held) {
		t.Fatalf("a ticket's take of a held key: %v, want a *NotAcquiredError", err)
	}
	if held.Remaining <= 0 {
		t.Errorf("a ticket's refusal gives Remaining %v, want the holder's TTL", held.Remaining)
	}
	return tk
}

// awaitReady waits until tk's Locker finds it at the head with the key
// free (its Wait returns).
func awaitReady(t *testing.T, tk lock.Ticket) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := tk.Wait(ctx, nil); err != nil {
		t.Fatalf("the head's Wait after the release: %v", err)
	}
}

// takeTurn takes k through tk as lock.Acquire does: Wait and take again
// after each refusal (a Wait may return spuriously).
func takeTurn(t *testing.T, tk lock.Ticket) lock.Lease {
	t.Helper()
	le := takeTurnNoFatal(t, tk)
	if le == nil {
		t.FailNow()
	}
	return le
}

// takeTurnNoFatal is takeTurn for a goroutine: it reports a failure with
// t.Errorf and returns nil.
func takeTurnNoFatal(t *testing.T, tk lock.Ticket) lock.Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for {
		le, err := tk.TryAcquire(ctx, time.Minute)
		var held *lock.NotAcquiredError
		if !errors.As(err, &held) {
			if err != nil {
				t.Errorf("the take: %v", err)
				return nil
			}
			return le
		}
		if err := tk.Wait(ctx, held); err != nil {
			t.Errorf("never got the key: %v", err)
			return nil
		}
	}
}

// releaseExpired checks that the Release of le, whose lease expired,
// reports ErrNotHeld.
func releaseExpired(t *testing.T, le lock.Lease) {
	t.Helper()
	if err := le.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("the expired lease's release: %v, want ErrNotHeld", err)
	}
}

// The three outcomes of a ticket's take and of its Close.
func TestQueueOutcomes(t *testing.T) {
	checkNoSessions(t)
	admin, _ := newClient(t)
	pfx := consullock.DefaultPrefix
	t.Run("take done", func(t *testing.T) {
		k, le := heldKey(t)
		l, _ := newLocker(t, consullock.WithQueue())
		tk := queuedTicket(t, l, k)
		if err := le.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		got := takeTurn(t, tk)
		if got.Token() <= le.Token() {
			t.Errorf("token %d after %d: fencing broken", got.Token(), le.Token())
		}
		if n := queueLen(t, admin, pfx, k); n != 0 {
			t.Errorf("the queue holds %d waiters after the head's take, want 0 (the take marks the entry taken)", n)
		}
		if err := tk.Close(); err != nil {
			t.Errorf("Close after the take: %v", err)
		}
		if err := got.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		if es := queueEntries(t, admin, pfx, k); len(es) != 0 {
			t.Errorf("the queue holds %d entries after the release, want 0 (the release deletes the taken entry)", len(es))
		}
	})
	t.Run("take not done", func(t *testing.T) {
		// The head is woken, but a plain TryAcquire (which never looks at
		// the queue) takes the key first: the head's take is refused, and
		// it keeps its place.
		k, le := heldKey(t)
		l, _ := newLocker(t, consullock.WithQueue())
		tk := queuedTicket(t, l, k)
		if err := le.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		awaitReady(t, tk)
		plain, _ := newLocker(t)
		le2, err := plain.TryAcquire(t.Context(), k, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tk.TryAcquire(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
			t.Fatalf("the head's take of a key taken meanwhile: %v, want ErrNotAcquired", err)
		}
		if n := queueLen(t, admin, pfx, k); n != 1 {
			t.Fatalf("the queue holds %d waiters after a refused take, want 1 (the head keeps its place)", n)
		}
		if err := le2.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		_ = takeTurn(t, tk).Release(t.Context())
	})
	t.Run("take reply lost", func(t *testing.T) {
		// The take happened but its reply was lost: the error is not
		// ErrNotAcquired, the session it took with is destroyed (which
		// frees the key), and Close removes the entry if it is left.
		k, le := heldKey(t)
		l, faults, _ := newFaultyLocker(t, consullock.WithQueue())
		tk := queuedTicket(t, l, k)
		if err := le.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		awaitReady(t, tk)
		faults.LoseNextReply()
		if _, err := tk.TryAcquire(t.Context(), time.Minute); err == nil || errors.Is(err, lock.ErrNotAcquired) {
			t.Fatalf("a take whose reply was lost: %v, want an error of unknown outcome", err)
		}
		if err := tk.Close(); err != nil {
			t.Errorf("Close after a take of unknown outcome: %v", err)
		}
		if n := queueLen(t, admin, pfx, k); n != 0 {
			t.Errorf("the queue holds %d waiters after Close, want 0", n)
		}
		// The key the lost take holds is freed when its session is destroyed.
		other, _ := newLocker(t)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		got, err := lock.Acquire(ctx, other, k, time.Minute)
		if err != nil {
			t.Fatalf("the key a lost take held was not freed: %v", err)
		}
		_ = got.Release(t.Context())
	})
	t.Run("queueing reply lost", func(t *testing.T) {
		k, _ := heldKey(t)
		l, faults, _ := newFaultyLocker(t, consullock.WithQueue())
		tk, err := l.Queue(t.Context(), k)
		if err != nil {
			t.Fatal(err)
		}
		faults.LoseNextReply()
		if _, err := tk.TryAcquire(t.Context(), time.Minute); err == nil || errors.Is(err, lock.ErrNotAcquired) {
			t.Fatalf("a queueing whose reply was lost: %v, want an error of unknown outcome", err)
		}
		if n := queueLen(t, admin, pfx, k); n != 1 {
			t.Fatalf("the queue holds %d waiters after a queueing whose reply was lost, want 1 (the server applied it)", n)
		}
		if err := tk.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if n := queueLen(t, admin, pfx, k); n != 0 {
			t.Errorf("the queue holds %d waiters after Close, want 0 (Close deletes an entry that may exist)", n)
		}
	})
	t.Run("close done", func(t *testing.T) {
		k, _ := heldKey(t)
		l, _ := newLocker(t, consullock.WithQueue())
		tk := queuedTicket(t, l, k)
		if err := tk.Close(); err != nil {
			t.Fatal(err)
		}
		if n := queueLen(t, admin, pfx, k); n != 0 {
			t.Errorf("the queue holds %d waiters after Close, want 0", n)
		}
		if err := tk.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
	for _, c := range []struct {
		name  string
		fault func(*testenv.FaultSwitch)
	}{
		{"close reply lost", (*testenv.FaultSwitch).LoseNextReply},
		{"close not done", (*testenv.FaultSwitch).StallNextRequest},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Close fails: the Locker abandons its queue session, so that
			// an entry that may be left never blocks the queue; the
			// Locker's other waiter queues again and still gets the key.
			k, le := heldKey(t)
			l, faults, _ := newFaultyLocker(t, consullock.WithQueue())
			tk := queuedTicket(t, l, k)
			other := queuedTicket(t, l, k)
			c.fault(faults)
			if err := tk.Close(); err == nil {
				t.Fatal("Close whose request failed returned nil, want the error")
			}
			awaitQueueLen(t, admin, pfx, k, 0, queueBound)
			if err := le.Release(t.Context()); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			for {
				got, err := other.TryAcquire(ctx, time.Minute)
				if err == nil {
					_ = got.Release(t.Context())
					break
				}
				var held *lock.NotAcquiredError
				if !errors.As(err, &held) {
					t.Fatalf("the other waiter after its Locker abandoned its queue session: %v", err)
				}
				if err := other.Wait(ctx, held); err != nil {
					t.Fatalf("the other waiter never got the key: %v", err)
				}
			}
		})
	}
}

// Many waiters of one Locker and of another, queued and unqueued, on one
// key: each gets the key in turn, never two at once, and every queue entry
// is gone at the end.
func TestQueueMixedAndConcurrent(t *testing.T) {
	checkNoSessions(t)
	k := key(t, "k")
	admin, _ := newClient(t)
	queued, _ := newLocker(t, consullock.WithQueue())
	queued2, _ := newLocker(t, consullock.WithQueue())
	plain, _ := newLocker(t)
	lockers := []lock.Locker{queued, queued, queued, queued2, queued2, plain, plain, plain}
	const rounds = 4
	var (
		held  atomic.Int32
		takes atomic.Int32
		wg    sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for i, l := range lockers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				le, err := lock.Acquire(ctx, l, k, time.Minute)
				if err != nil {
					t.Errorf("waiter %d: %v", i, err)
					return
				}
				if held.Add(1) != 1 {
					t.Errorf("waiter %d holds the key with another: mutual exclusion broken", i)
				}
				takes.Add(1)
				time.Sleep(time.Millisecond) // hold the key a little, as work would
				held.Add(-1)
				if err := le.Release(context.Background()); err != nil {
					t.Errorf("waiter %d release: %v", i, err)
				}
			}
		}()
	}
	wg.Wait()
	if n := takes.Load(); n != int32(len(lockers)*rounds) {
		t.Errorf("%d takes, want %d", n, len(lockers)*rounds)
	}
	awaitQueueLen(t, admin, consullock.DefaultPrefix, k, 0, time.Second)
}

// A waiter whose queue session vanishes (destroyed from outside here; an
// agent restart or a long stall would do the same) queues again under the
// Locker's next session and still gets the key.
func TestQueueSessionLost(t *testing.T) {
	checkNoSessions(t)
	k, le := heldKey(t)
	admin, _ := newClient(t)
	l, _ := newLocker(t, consullock.WithQueue())
	got := make(chan error, 1)
	go func() {
		held, err := lock.Acquire(t.Context(), l, k, time.Minute)
		if err == nil {
			err = held.Release(context.Background())
		}
		got <- err
	}()
	awaitQueueLen(t, admin, consullock.DefaultPrefix, k, 1, 10*time.Second)
	ss := sessions(t, admin, sessionName(t)+" queue")
	if len(ss) != 1 {
		t.Fatalf("%d queue sessions, want 1", len(ss))
	}
	if _, err := admin.Session().Destroy(ss[0].ID, nil); err != nil {
		t.Fatal(err)
	}
	awaitQueueLen(t, admin, consullock.DefaultPrefix, k, 0, 5*time.Second) // the entry went with it
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("the waiter whose queue session vanished: %v", err)
		}
	case <-time.After(queueBound + 5*time.Second):
		t.Fatal("the waiter whose queue session vanished never got the key")
	}
}
