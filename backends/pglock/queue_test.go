package pglock_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/pglock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/jackc/pgx/v5/pgxpool"
)

// queueGrace is pglock's queueGrace: how long a dead waiter outlives the
// time it promised to come back.
const queueGrace = 2 * time.Second

// queueLen returns how many waiters key's queue holds in table's waiters
// table, live or expired, as the server sees it.
func queueLen(t *testing.T, pool *pgxpool.Pool, table, key string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), fmt.Sprintf("SELECT count(*) FROM %s_waiters WHERE key = $1", table), []byte(key)).Scan(&n); err != nil {
		t.Fatalf("counting the queue: %v", err)
	}
	return n
}

// awaitQueueLen polls the queue's length until it is n (the event is a
// write on the server, which only polling can see), failing after d.
func awaitQueueLen(t *testing.T, pool *pgxpool.Pool, table, key string, n int, d time.Duration) {
	t.Helper()
	testenv.AwaitQueueLen(t, func() int { return queueLen(t, pool, table, key) }, n, d)
}

func TestQueueOff(t *testing.T) {
	l := newLocker(t)
	if _, err := l.Queue(t.Context(), "k"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Queue on a Locker without WithQueue: %v, want an error matching errors.ErrUnsupported", err)
	}
	q := newLocker(t, pglock.WithQueue())
	if _, err := q.Queue(t.Context(), ""); !errors.Is(err, lock.ErrInvalidKey) {
		t.Errorf("Queue of an empty key: %v, want ErrInvalidKey", err)
	}
	tk, err := q.Queue(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	if err := tk.Close(); err != nil {
		t.Errorf("Close of a ticket that never waited: %v", err)
	}
	if _, err := tk.TryAcquire(t.Context(), time.Second); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("TryAcquire on a closed ticket: %v, want ErrInvalidArgument", err)
	}
}

// A release hands the key to the head: with eight queued waiters, the
// requests sent from the release until the head holds the key are the
// release (one round trip) alone, and the other waiters send nothing.
func TestQueueReleaseWakesOnlyHead(t *testing.T) {
	table := testTable(t)
	url := postgresURL(t)
	holder, hw := newLockerOn(t, url, pglock.WithTable(table), pglock.WithQueue())
	waiters, ww := newLockerOn(t, url, pglock.WithTable(table), pglock.WithQueue())
	admin := newPool(t, url, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	warm, err := holder.TryAcquire(ctx, "warm-up", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Release(ctx); err != nil { // pgx prepares the release
		t.Fatal(err)
	}
	le, err := holder.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	got := make(chan lock.Lease, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range n {
		wg.Go(func() {
			if l, err := lock.Acquire(ctx, waiters, "k", time.Minute); err == nil {
				got <- l
			}
		})
		awaitQueueLen(t, admin, table, "k", i+1, 10*time.Second)
	}
	before, hbefore := ww.RoundTrips(), hw.RoundTrips()
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	var first lock.Lease
	select {
	case first = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no waiter took the key after the release")
	}
	if sent := hw.RoundTrips() - hbefore; sent != 1 {
		t.Errorf("the release made %d round trips, want 1", sent)
	}
	if sent := ww.RoundTrips() - before; sent != 0 {
		t.Errorf("the waiters made %d round trips from the release until the head held the key, want 0 (the release handed it over)", sent)
	}
	if q := queueLen(t, admin, table, "k"); q != n-1 {
		t.Errorf("the queue holds %d waiters after the head took the key, want %d", q, n-1)
	}
	// The rest are served one by one, each by one release.
	for range n - 1 {
		if err := first.Release(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case first = <-got:
		case <-time.After(10 * time.Second):
			t.Fatal("no waiter took the key after a release: the queue stalled")
		}
	}
	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if q := queueLen(t, admin, table, "k"); q != 0 {
		t.Errorf("the queue holds %d waiters after every waiter was served, want 0", q)
	}
}

// TestQueuedChild is the child process of TestQueueKilledWaiterExpires: a
// waiter that queues on a key once the parent holds it, for 2 s (a release
// may hand it the key: it holds it then until 2 s after its last take),
// and waits until it is killed. Its argument is its table.
func TestQueuedChild(t *testing.T) {
	table, ok := testenv.ChildArg()
	if !ok {
		return
	}
	l := newLocker(t, pglock.WithTable(table), pglock.WithQueue())
	testenv.ChildSignal(t, "ready")
	testenv.ChildAwait("go") // the parent holds the key
	_, err := lock.Acquire(t.Context(), l, "k", 2*time.Second)
	t.Fatalf("the child's Acquire returned (%v): it should have been killed while waiting", err)
}

// A waiter whose process is killed while queued (SIGKILL: it never leaves)
// stalls the queue only until its entry expires, or, when the release
// handed it the key, until the lease expires (its TTL, 2 s, after its last
// take, within the holder's TTL): the waiter behind it gets the key at
// most the holder's TTL plus the queue's grace (2 s) after the holder's
// take, although the release woke the dead head only.
func TestQueueKilledWaiterExpires(t *testing.T) {
	table := testTable(t)
	url := postgresURL(t)
	admin := newPool(t, url, nil)
	holder := newLocker(t, pglock.WithTable(table), pglock.WithQueue())
	if err := holder.Migrate(t.Context()); err != nil { // not by the child, within the holder's TTL
		t.Fatal(err)
	}
	const ttl = 2 * time.Second // the child queues within it, even under -race on a loaded machine
	child := testenv.StartChild(t, "TestQueuedChild", table)
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
	child.Await(t, "queued", func() bool { return queueLen(t, admin, table, "k") == 1 })
	child.Kill(t)

	waiter := newLocker(t, pglock.WithTable(table), pglock.WithQueue())
	behind := testenv.StartBehind(t, waiter, "k")
	awaitQueueLen(t, admin, table, "k", 2, 10*time.Second)
	// The release wakes the dead head only. On a loaded machine the
	// holding may have expired by now: then no release wakes anyone, and
	// the bound below holds all the same.
	if err := le.Release(t.Context()); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		t.Fatal(err)
	}
	// The dead entry expires the grace after the holder's deadline; the
	// waiter behind it comes back then, plus scheduling under -race.
	bound := ttl + queueGrace + 6*conformance.SchedulingSlack
	behind.AwaitKey(t, taken, "the holder's take", bound)
	if q := queueLen(t, admin, table, "k"); q != 0 {
		t.Errorf("the queue still holds %d waiters: the killed waiter's entry was not removed", q)
	}
}

// The three outcomes of a ticket's take and of its Close (leaving the
// queue): done, not done (a request that never reached the server,
// cancelled), unknown (the reply lost after the server applied it).
func TestQueueOutcomes(t *testing.T) {
	table := testTable(t)
	url := postgresURL(t)
	admin := newPool(t, url, nil)
	holder := newLocker(t, pglock.WithTable(table))
	const ttl = 8 * time.Second // outlasts the stalled leave (5 s)
	held, err := holder.TryAcquire(t.Context(), "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	l, w := newLockerOn(t, url, pglock.WithTable(table), pglock.WithQueue())
	ticket := func(t *testing.T) lock.Ticket {
		tk, err := l.Queue(t.Context(), "k")
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	queued := func(t *testing.T) lock.Ticket {
		tk := ticket(t)
		_, err := tk.TryAcquire(t.Context(), time.Minute)
		var na *lock.NotAcquiredError
		if !errors.As(err, &na) {
			t.Fatalf("a ticket's take of a held key: %v, want a *NotAcquiredError", err)
		}
		if na.Version != held.Token() || na.Remaining <= 0 || na.Remaining > ttl {
			t.Errorf("a refused ticket take reported %+v, want the holder's token %d and a remaining TTL in (0, %v]", na, held.Token(), ttl)
		}
		if q := queueLen(t, admin, table, "k"); q != 1 {
			t.Fatalf("the queue holds %d waiters after a refused ticket take, want 1", q)
		}
		return tk
	}

	t.Run("take done, leave done", func(t *testing.T) {
		tk := queued(t)
		before := w.RoundTrips()
		if err := tk.Close(); err != nil {
			t.Fatal(err)
		}
		if n := w.RoundTrips() - before; n != 1 {
			t.Errorf("Close made %d round trips, want 1 (it runs after Acquire's context ended: no prepare)", n)
		}
		if q := queueLen(t, admin, table, "k"); q != 0 {
			t.Errorf("the queue holds %d waiters after Close, want 0", q)
		}
		if err := tk.Close(); err != nil {
			t.Errorf("a second Close: %v", err)
		}
	})
	t.Run("take reply lost", func(t *testing.T) {
		w.LoseNextReply()
		_, err := lock.Acquire(t.Context(), l, "k", time.Minute)
		notLockError(t, "Acquire whose queued take", err)
		if q := queueLen(t, admin, table, "k"); q != 0 {
			t.Errorf("the queue holds %d waiters after Acquire gave up, want 0 (the ticket leaves)", q)
		}
	})
	t.Run("take not done", func(t *testing.T) {
		tk := ticket(t)
		w.StallNextRequest()
		ctx, cancel := context.WithCancel(t.Context())
		go func() { <-w.Stalled(); cancel() }()
		if _, err := tk.TryAcquire(ctx, time.Minute); !errors.Is(err, context.Canceled) {
			t.Errorf("a ticket's take cancelled in flight: %v, want context.Canceled", err)
		}
		if q := queueLen(t, admin, table, "k"); q != 0 {
			t.Errorf("the queue holds %d waiters after a take that never ran, want 0", q)
		}
		if err := tk.Close(); err != nil { // leaves, finding nothing
			t.Errorf("Close after a take that never ran: %v", err)
		}
	})
	t.Run("leave reply lost", func(t *testing.T) {
		tk := queued(t)
		w.LoseNextReply()
		if err := tk.Close(); err == nil {
			t.Error("Close whose leave lost its reply returned nil, want the error")
		}
		if q := queueLen(t, admin, table, "k"); q != 0 {
			t.Errorf("the queue holds %d waiters after a leave that was applied, want 0", q)
		}
	})
	t.Run("leave not done", func(t *testing.T) {
		// The holder must outlast the stalled leave: renewed here, it
		// does whatever the subtests before took on a loaded machine.
		if err := held.Refresh(t.Context(), ttl); err != nil {
			t.Fatal(err)
		}
		tk := queued(t)
		w.StallNextRequest()
		if err := tk.Close(); err == nil {
			t.Error("Close whose leave stalled returned nil, want the error")
		}
		if q := queueLen(t, admin, table, "k"); q != 1 {
			t.Fatalf("the queue holds %d waiters after a leave that never ran, want 1", q)
		}
		// The entry is ignored once expired (the holder's TTL plus the
		// grace) and deleted by the next take of the key.
		var expires time.Duration
		if err := admin.QueryRow(t.Context(), fmt.Sprintf("SELECT (extract(epoch FROM max(expires_at) - clock_timestamp()) * 1000000)::bigint FROM %s_waiters WHERE key = $1", table), []byte("k")).Scan(&expires); err != nil {
			t.Fatal(err)
		}
		if expires *= time.Microsecond; expires <= 0 || expires > ttl+queueGrace {
			t.Errorf("the stranded entry expires in %v, want within the holder's TTL plus the grace, %v", expires, ttl+queueGrace)
		}
		if err := held.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		le, err := lock.Acquire(t.Context(), newLocker(t, pglock.WithTable(table), pglock.WithQueue()), "k", time.Minute)
		if err != nil {
			t.Fatalf("Acquire behind a stranded entry: %v", err)
		}
		if q := queueLen(t, admin, table, "k"); q != 0 {
			t.Errorf("the queue holds %d waiters after the take that followed the entry's expiry, want 0", q)
		}
		_ = le.Release(t.Context())
	})
}

// Many queued waiters on several Lockers, some of which give up at random
// moments: the key is held by one at a time, every waiter that stays gets
// it, and the queue is empty at the end (no leave or take is lost).
func TestQueueConcurrent(t *testing.T) {
	table := testTable(t)
	url := postgresURL(t)
	admin := newPool(t, url, nil)
	lockers := []*pglock.Locker{
		newLocker(t, pglock.WithTable(table), pglock.WithQueue()),
		newLocker(t, pglock.WithTable(table), pglock.WithQueue()),
		newLocker(t, pglock.WithTable(table)), // unqueued, sharing the key
	}
	const n = 24
	var (
		inside, most atomic.Int32
		served, gave atomic.Int32
		wg           sync.WaitGroup
	)
	for i := range n {
		wg.Go(func() {
			ctx := t.Context()
			if i%4 == 3 { // gives up after a while, perhaps woken
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, time.Duration(i)*5*time.Millisecond)
				defer cancel()
			}
			le, err := lock.Acquire(ctx, lockers[i%len(lockers)], "k", 10*time.Second)
			if err != nil {
				if !errors.Is(err, lock.ErrNotAcquired) || ctx.Err() == nil {
					t.Errorf("waiter %d: %v", i, err)
				}
				gave.Add(1)
				return
			}
			if v := inside.Add(1); v > most.Load() {
				most.Store(v)
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			served.Add(1)
			if err := le.Release(context.WithoutCancel(ctx)); err != nil {
				t.Errorf("waiter %d: release: %v", i, err)
			}
		})
	}
	wg.Wait()
	if most.Load() > 1 {
		t.Errorf("%d waiters held the key at once", most.Load())
	}
	if served.Load()+gave.Load() != n || served.Load() < n*3/4 {
		t.Errorf("%d served and %d gave up of %d (only a quarter may give up)", served.Load(), gave.Load(), n)
	}
	if q := queueLen(t, admin, table, "k"); q != 0 {
		t.Errorf("the queue holds %d waiters after every waiter left, want 0", q)
	}
}

// Queued and unqueued Lockers share keys: a release by either wakes the
// waiters of both, and all are served.
func TestQueueMixed(t *testing.T) {
	table := testTable(t)
	queued := newLocker(t, pglock.WithTable(table), pglock.WithQueue())
	plain := newLocker(t, pglock.WithTable(table))
	admin := newPool(t, postgresURL(t), nil)
	for _, tc := range []struct {
		name   string
		holder *pglock.Locker
	}{{"queued holder", queued}, {"unqueued holder", plain}} {
		t.Run(tc.name, func(t *testing.T) {
			key := tc.name
			le, err := tc.holder.TryAcquire(t.Context(), key, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan lock.Lease, 2)
			errc := make(chan error, 2)
			for _, l := range []*pglock.Locker{queued, plain} {
				go func() {
					le, err := lock.Acquire(t.Context(), l, key, time.Minute)
					if err != nil {
						errc <- err
						return
					}
					got <- le
				}()
			}
			awaitQueueLen(t, admin, table, key, 1, 10*time.Second) // the queued one
			bound := 10 * time.Second
			for range 2 {
				if err := le.Release(t.Context()); err != nil {
					t.Fatal(err)
				}
				select {
				case le = <-got:
				case err := <-errc:
					t.Fatal(err)
				case <-time.After(bound):
					t.Fatalf("no waiter got the key within %v of a release", bound)
				}
			}
			if err := le.Release(t.Context()); err != nil {
				t.Fatal(err)
			}
			if q := queueLen(t, admin, table, key); q != 0 {
				t.Errorf("the queue holds %d waiters, want 0", q)
			}
		})
	}
}

// A table made before WithQueue (no waiters table) keeps working: the
// first queued statement creates what is missing.
func TestQueueOldTable(t *testing.T) {
	table := testTable(t)
	old := newLocker(t, pglock.WithTable(table))
	if err := old.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	admin := newPool(t, postgresURL(t), nil)
	if _, err := admin.Exec(t.Context(), fmt.Sprintf("DROP TABLE %s_waiters", table)); err != nil {
		t.Fatal(err)
	}
	le, err := old.TryAcquire(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	q := newLocker(t, pglock.WithTable(table), pglock.WithQueue())
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := lock.Acquire(ctx, q, "k", time.Minute); !errors.Is(err, lock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued Acquire of a held key on an old table: %v, want ErrNotAcquired at the deadline", err)
	}
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	le, err = lock.Acquire(t.Context(), q, "k", time.Minute)
	if err != nil {
		t.Fatalf("queued Acquire of a free key: %v", err)
	}
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n, err := q.Cleanup(t.Context()); err != nil || n != 0 {
		t.Errorf("Cleanup = %d, %v, want nothing to delete", n, err)
	}
}

// A queued take whose reply was lost on a free key: Acquire gives up with
// the error, and its ticket's leave undoes the take (its row names the
// ticket), so the key is free at once instead of held, by a lease nobody
// has, until its TTL.
func TestQueueLostTakeUndone(t *testing.T) {
	table := testTable(t)
	url := postgresURL(t)
	admin := newPool(t, url, nil)
	l, w := newLockerOn(t, url, pglock.WithTable(table), pglock.WithQueue())
	warm, err := lock.Acquire(t.Context(), l, "warm", time.Minute) // the table, the statements, the listener
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	w.LoseNextReply()
	_, err = lock.Acquire(t.Context(), l, "k", time.Minute)
	notLockError(t, "Acquire whose queued take", err)
	if row := readRow(t, admin, table, "k"); row.found {
		t.Errorf("the key's row is still there after Acquire gave up: %+v (the take whose reply was lost was not undone)", row)
	}
	if q := queueLen(t, admin, table, "k"); q != 0 {
		t.Errorf("the queue holds %d waiters after Acquire gave up, want 0", q)
	}
	le, err := newLocker(t, pglock.WithTable(table)).TryAcquire(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatalf("a take after the undone one: %v", err)
	}
	_ = le.Release(t.Context())
}

// A direct ticket user retries a take whose reply was lost: the retry
// leaves the queue first, which undoes the lost take (its row names the
// ticket), and then takes the key, instead of being refused by a lease
// nobody has until its TTL.
func TestQueueTicketRetryUndoesItsLostTake(t *testing.T) {
	table := testTable(t)
	url := postgresURL(t)
	admin := newPool(t, url, nil)
	l, w := newLockerOn(t, url, pglock.WithTable(table), pglock.WithQueue())
	warm, err := lock.Acquire(t.Context(), l, "warm", time.Minute) // the table, the statements, the listener
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	tk, err := l.Queue(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tk.Close() }()
	w.LoseNextReply()
	_, err = tk.TryAcquire(t.Context(), time.Minute)
	notLockError(t, "a ticket's take", err)
	lost := readRow(t, admin, table, "k")
	if !lost.found {
		t.Fatal("no row after a take whose reply was lost after the server applied it")
	}
	le, err := tk.TryAcquire(t.Context(), time.Minute)
	if err != nil {
		t.Fatalf("the ticket's retry: %v, want the key (the lost take undone)", err)
	}
	if le.Token() <= uint64(lost.token) {
		t.Errorf("the retry holds token %d, want one above the lost take's %d", le.Token(), lost.token)
	}
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if row := readRow(t, admin, table, "k"); row.found {
		t.Errorf("the key's row is still there after the release: %+v", row)
	}
}
