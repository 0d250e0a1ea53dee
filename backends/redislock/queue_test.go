package redislock_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/idemlock/lock/observe"
	"github.com/redis/go-redis/v9"
)

// queuedConfig is the conformance configuration of queued Lockers
// (WithQueue): the whole suite, queue clauses included, through tickets.
func (tp topology) queuedConfig() conformance.Config {
	return conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return tp.newLocker(t, nil, redislock.WithQueue()) },
		NewLockerTB:    func(tb testing.TB) lock.Locker { return tp.newLocker(tb, nil, redislock.WithQueue()) },
		TTLGranularity: time.Millisecond,
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			return tp.newFaultyLocker(t, redislock.WithQueue())
		},
	}
}

func TestConformanceQueued(t *testing.T) { conformance.Run(t, single.queuedConfig()) }

func TestConformanceQueuedCluster(t *testing.T) { conformance.Run(t, cluster.queuedConfig()) }

// TestConformanceQueuedObserved runs the suite on observed queued Lockers,
// fault clauses (lost replies, stalls) included: the wrapper passes Queue
// on, so the queue clauses run, and pass.
func TestConformanceQueuedObserved(t *testing.T) {
	var events atomic.Int64
	obs := observe.Func(func(context.Context, observe.Event) { events.Add(1) })
	cfg := single.queuedConfig()
	newLocker := cfg.NewLockerTB
	cfg.NewLocker = func(t *testing.T) lock.Locker { return lock.Observe(newLocker(t), obs) }
	cfg.NewLockerTB = func(tb testing.TB) lock.Locker { return lock.Observe(newLocker(tb), obs) }
	newFaulty := cfg.NewFaultyLocker
	cfg.NewFaultyLocker = func(t *testing.T) (lock.Locker, conformance.Faults) {
		l, f := newFaulty(t)
		return lock.Observe(l, obs), f
	}
	t.Run("QueueClauses", func(t *testing.T) {
		q, ok := cfg.NewLocker(t).(lock.Queuer)
		if !ok {
			t.Fatal("the observed queued Locker is not a lock.Queuer: Acquire would wait unqueued")
		}
		tk, err := q.Queue(t.Context(), "probe")
		if err != nil {
			t.Fatalf("Queue through the observed wrapper: %v", err)
		}
		_ = tk.Close()
	})
	conformance.Run(t, cfg)
	if events.Load() == 0 {
		t.Error("the observer saw no event")
	}
}

// queueLen returns how many waiters key's queue holds, as the server sees
// it.
func queueLen(t *testing.T, c redis.UniversalClient, prefix, key string) int64 {
	t.Helper()
	n, err := c.ZCard(context.Background(), prefix+"{"+key+"}:q").Result()
	if err != nil {
		t.Fatalf("ZCARD of the queue: %v", err)
	}
	return n
}

// awaitQueueLen polls the queue's length until it is n (the event is a
// write on the server, which only polling can see), failing after d.
func awaitQueueLen(t *testing.T, c redis.UniversalClient, prefix, key string, n int64, d time.Duration) {
	t.Helper()
	testenv.AwaitQueueLen(t, func() int64 { return queueLen(t, c, prefix, key) }, n, d)
}

// A release wakes only the head: with eight queued waiters, the requests
// sent from the release until the head holds the key are the release and
// the head's take, and the other waiters send nothing. Unqueued, every
// waiter sends a take.
func TestQueueReleaseWakesOnlyHead(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			prefix := tp.testPrefix(t)
			var count atomic.Int64
			holder := tp.newLocker(t, nil, redislock.WithPrefix(prefix), redislock.WithQueue())
			waiters := tp.newLocker(t, &count, redislock.WithPrefix(prefix), redislock.WithQueue())
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			le, err := holder.TryAcquire(ctx, "k", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			const n = 8
			got := make(chan lock.Lease, n)
			var wg sync.WaitGroup
			defer wg.Wait()
			defer cancel()
			admin := tp.client(t, "")
			for i := range n {
				wg.Go(func() {
					if l, err := lock.Acquire(ctx, waiters, "k", time.Minute); err == nil {
						got <- l
					}
				})
				awaitQueueLen(t, admin, prefix, "k", int64(i+1), 10*time.Second)
			}
			before := count.Load()
			if err := le.Release(ctx); err != nil {
				t.Fatal(err)
			}
			var first lock.Lease
			select {
			case first = <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("no waiter took the key after the release")
			}
			if sent := count.Load() - before; sent != 1 {
				t.Errorf("the waiters sent %d requests from the release until the head held the key, want 1 (the head's take)", sent)
			}
			if q := queueLen(t, admin, prefix, "k"); q != n-1 {
				t.Errorf("the queue holds %d waiters after the head took the key, want %d", q, n-1)
			}
			if err := first.Release(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestQueuedChild is the child process of TestQueueKilledWaiterExpires: a
// waiter that queues on a key once the parent holds it, and waits until it
// is killed. Its argument is its key prefix. If it was too slow to queue
// (the parent's holding had expired, and it took the key), it says so
// ("took") and waits to be killed all the same.
func TestQueuedChild(t *testing.T) {
	prefix, ok := testenv.ChildArg()
	if !ok {
		return
	}
	l := single.newLocker(t, nil, redislock.WithPrefix(prefix), redislock.WithQueue())
	testenv.ChildSignal(t, "ready")
	testenv.ChildAwait("go") // the parent holds the key
	_, err := lock.Acquire(t.Context(), l, "k", time.Minute)
	if err == nil {
		testenv.ChildSignal(t, "took")
		<-t.Context().Done() // killed
	}
	t.Fatalf("the child's Acquire returned (%v): it should have been killed while waiting", err)
}

// A waiter whose process is killed while queued (SIGKILL: it never leaves)
// stalls the queue only until its entry expires: the waiter behind it gets
// the key at most the holder's TTL plus the queue's grace (2 s) after the
// holder's take, although the release woke the dead head only.
//
// The child must queue within the holder's TTL, 2 s, and the waiter behind
// it before the dead entry expires. A child slower than that (under -race
// on a loaded machine) takes the key instead, or the waiter behind finds
// no dead entry ahead, which proves nothing: the test then starts again
// with twice the TTL.
func TestQueueKilledWaiterExpires(t *testing.T) {
	for ttl := 2 * time.Second; !killedWaiterExpires(t, ttl); ttl *= 2 {
		if ttl >= 8*time.Second {
			t.Fatalf("the child or the waiter behind it never queued in time (the last holder's TTL was %v)", ttl)
		}
		t.Logf("inconclusive: with the holder's TTL of %v, the child or the waiter behind it queued too late; again with twice the TTL", ttl)
	}
}

// grace is how long a queue entry outlives the holder's deadline.
const grace = 2 * time.Second

// killedWaiterExpires is one round of TestQueueKilledWaiterExpires with a
// holder's TTL of ttl, on keys of its own. It returns false, and checks
// nothing more, if the child took the key instead of queueing behind it
// (after the holder's TTL: before, the test fails), or the waiter behind
// queued only once the dead entry could have expired.
func killedWaiterExpires(t *testing.T, ttl time.Duration) bool {
	t.Helper()
	prefix := single.testPrefix(t)
	admin := single.client(t, "")
	holder := single.newLocker(t, nil, redislock.WithPrefix(prefix), redislock.WithQueue())
	child := testenv.StartChild(t, "TestQueuedChild", prefix)
	// The child says "ready" (it may take seconds to start under -race)
	// and waits for "go", so that it queues at once behind the short
	// holding.
	child.Await(t, "was ready", child.Signalled("ready"))
	taken := time.Now()
	le, err := holder.TryAcquire(t.Context(), "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	child.Signal(t, "go")
	signalled := child.Signalled("took")
	// took reports whether the child took the key. The holder has not
	// released it, and its server expiry comes ttl after taken at the
	// earliest: a take seen before then is a held key handed to another
	// waiter, which no retry may excuse.
	took := func() bool {
		if !signalled() {
			return false
		}
		if d := time.Since(taken); d < ttl {
			t.Fatalf("the child took the key %v after the holder's take, within the holder's TTL %v: a queue handed a held key to its waiter", d, ttl)
		}
		return true
	}
	child.Await(t, "queued", func() bool { return took() || queueLen(t, admin, prefix, "k") == 1 })
	child.Kill(t)
	if took() {
		return false
	}

	waiter := single.newLocker(t, nil, redislock.WithPrefix(prefix), redislock.WithQueue())
	behind := testenv.StartBehind(t, waiter, "k")
	for queueLen(t, admin, prefix, "k") != 2 {
		if time.Since(taken) > ttl+grace {
			return false // the dead entry may have expired before the waiter behind queued
		}
		time.Sleep(5 * time.Millisecond) // polling the server: a queued take sends this test no event
	}
	// The release wakes the dead head only. On a loaded machine the
	// holding may have expired by now: then no release wakes anyone, and
	// the bound below holds all the same.
	if err := le.Release(t.Context()); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		t.Fatal(err)
	}
	// The dead entry expires the grace (2 s) after the holder's deadline;
	// the waiter behind it comes back then, plus scheduling under -race.
	bound := ttl + grace + 6*conformance.SchedulingSlack
	behind.AwaitKey(t, taken, "the holder's take", bound)
	if q := queueLen(t, admin, prefix, "k"); q != 0 {
		t.Errorf("the queue still holds %d waiters: the killed waiter's entry was not removed", q)
	}
	return true
}

// The three outcomes of joining and leaving the queue. A take whose reply
// was lost may have queued the ticket: Acquire returns the error and the
// ticket's Close leaves the queue. A leave whose reply was lost did leave.
// A leave that never reached the server (stalled until its timeout)
// leaves the entry to expire: by the holder's TTL plus the grace.
func TestQueueUnknownOutcomes(t *testing.T) {
	prefix := single.testPrefix(t)
	admin := single.client(t, "")
	holder := single.newLocker(t, nil, redislock.WithPrefix(prefix))
	const ttl = 8 * time.Second // outlasts the stalled leave (5 s)
	if _, err := holder.TryAcquire(t.Context(), "k", ttl); err != nil {
		t.Fatal(err)
	}
	l, faults := single.newFaultyLocker(t, redislock.WithPrefix(prefix), redislock.WithQueue())

	t.Run("take reply lost", func(t *testing.T) {
		faults.LoseNextReply()
		_, err := lock.Acquire(t.Context(), l, "k", time.Minute)
		if err == nil || errors.Is(err, lock.ErrNotAcquired) {
			t.Fatalf("Acquire whose queued take lost its reply: %v, want an error of unknown outcome", err)
		}
		if q := queueLen(t, admin, prefix, "k"); q != 0 {
			t.Errorf("the queue holds %d waiters after Acquire gave up, want 0 (the ticket leaves)", q)
		}
	})

	// The remaining cases drive a ticket by hand, to arm the fault on its
	// leave.
	queued := func(t *testing.T) lock.Ticket {
		tk, err := l.Queue(t.Context(), "k")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tk.TryAcquire(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
			t.Fatalf("a ticket's take of a held key: %v, want ErrNotAcquired", err)
		}
		if q := queueLen(t, admin, prefix, "k"); q != 1 {
			t.Fatalf("the queue holds %d waiters after a refused ticket take, want 1", q)
		}
		return tk
	}
	t.Run("leave reply lost", func(t *testing.T) {
		tk := queued(t)
		faults.LoseNextReply()
		if err := tk.Close(); err == nil {
			t.Error("Close whose leave lost its reply returned nil, want the error")
		}
		if q := queueLen(t, admin, prefix, "k"); q != 0 {
			t.Errorf("the queue holds %d waiters after a leave that was applied, want 0", q)
		}
	})
	t.Run("leave not done", func(t *testing.T) {
		tk := queued(t)
		pttl, err := admin.PTTL(t.Context(), prefix+"{k}:q").Result()
		if err != nil {
			t.Fatal(err)
		}
		if max := ttl + 2*time.Second; pttl <= 0 || pttl > max {
			t.Errorf("the queue expires in %v, want within the holder's TTL plus the grace, %v", pttl, max)
		}
		faults.StallNextRequest()
		if err := tk.Close(); err == nil {
			t.Error("Close whose leave stalled returned nil, want the error")
		}
		if q := queueLen(t, admin, prefix, "k"); q != 1 {
			t.Fatalf("the queue holds %d waiters after a leave that never ran, want 1", q)
		}
		awaitQueueLen(t, admin, prefix, "k", 0, ttl+2*time.Second+time.Second)
	})
}

// lostHeadTake has holder take "k" for a minute, queues a ticket of a
// faulty queued Locker, releases the key and loses the reply of the
// ticket's take, which then holds the key for a minute with a lease nobody
// has. The ticket is closed when t ends.
func lostHeadTake(t *testing.T, tp topology, prefix string, holder lock.Locker) lock.Ticket {
	t.Helper()
	held, err := holder.TryAcquire(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	l, faults := tp.newFaultyLocker(t, redislock.WithPrefix(prefix), redislock.WithQueue())
	tk, err := l.Queue(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tk.Close() })
	if _, err := tk.TryAcquire(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("a ticket's take of a held key: %v, want ErrNotAcquired", err)
	}
	if err := held.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	faults.LoseNextReply()
	if _, err := tk.TryAcquire(t.Context(), time.Minute); err == nil || errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("the head's take whose reply was lost: %v, want an error of unknown outcome", err)
	}
	return tk
}

// A woken head whose take was applied but whose reply was lost holds the
// key with a lease nobody has: its Close (Acquire closes the ticket after
// the error) deletes the key by the take's nonce and wakes the next
// waiter, so the key is free at once, not after the lost take's TTL.
func TestQueueLostTakeUndoneByClose(t *testing.T) {
	prefix := single.testPrefix(t)
	holder := single.newLocker(t, nil, redislock.WithPrefix(prefix))
	other := single.newLocker(t, nil, redislock.WithPrefix(prefix))
	tk := lostHeadTake(t, single, prefix, holder)
	if _, err := other.TryAcquire(t.Context(), "k", time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("a take while the lost take holds the key: %v, want ErrNotAcquired (the fault did not apply the take)", err)
	}
	if err := tk.Close(); err != nil {
		t.Fatalf("Close after a take of unknown outcome: %v", err)
	}
	le, err := other.TryAcquire(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatalf("a take after the head left: %v, want the key (Close undoes the lost take, whose TTL is a minute)", err)
	}
	_ = le.Release(t.Context())
}

// When a ticket's Close undoes its lost take and no other ticket is
// queued, the key is free: a waiter of an unqueued Locker sharing the key
// (woken by every release message) must be told, as a release would tell
// it, not sleep through the rest of the lost take's TTL (a minute here),
// by which its wait is bounded. Before the fix the leave published only
// the next queued waiter's id, and nothing when none was queued.
func TestQueueLostTakeUndoneWakesUnqueued(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			prefix := tp.testPrefix(t)
			holder := tp.newLocker(t, nil, redislock.WithPrefix(prefix), redislock.WithQueue())
			plain := tp.newLocker(t, nil, redislock.WithPrefix(prefix))
			tk := lostHeadTake(t, tp, prefix, holder)
			// The unqueued waiter, as lock.Acquire runs it: an attempt, a
			// subscription, an attempt, a wait bounded by the holder's TTL.
			_, err := plain.TryAcquire(t.Context(), "k", time.Minute)
			if !errors.Is(err, lock.ErrNotAcquired) {
				t.Fatalf("a take while the lost take holds the key: %v, want ErrNotAcquired", err)
			}
			w, err := lock.NewWaiter(t.Context(), plain, "k")
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if _, err = plain.TryAcquire(t.Context(), "k", time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
				t.Fatalf("a take while the lost take holds the key: %v, want ErrNotAcquired", err)
			}
			if err := tk.Close(); err != nil {
				t.Fatalf("Close after a take of unknown outcome: %v", err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			if err := w.Wait(ctx, err); err != nil {
				t.Fatalf("the unqueued waiter was not woken within 5s of the Close that freed the key (the lost take's TTL is a minute): %v", err)
			}
			le, err := plain.TryAcquire(t.Context(), "k", time.Minute)
			if err != nil {
				t.Fatalf("a take after the Close that undid the lost take: %v", err)
			}
			_ = le.Release(t.Context())
		})
	}
}
