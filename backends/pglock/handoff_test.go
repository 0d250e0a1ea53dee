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
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The direct hand-off (queue.go): a queued release gives the key to the
// live head of the queue, whose ticket returns it without a request.

// leaseRow is the key's row in the lease table, as the server sees it.
type leaseRow struct {
	token   int64
	handed  bool // handed_to names a waiter (handed to it, or taken by its ticket)
	expires time.Time
	found   bool
}

func readRow(t *testing.T, admin *pgxpool.Pool, table, key string) leaseRow {
	t.Helper()
	var r leaseRow
	err := admin.QueryRow(t.Context(), fmt.Sprintf("SELECT token, handed_to IS NOT NULL, expires_at FROM %s WHERE key = $1", table), []byte(key)).
		Scan(&r.token, &r.handed, &r.expires)
	switch {
	case err == nil:
		r.found = true
	case !errors.Is(err, pgx.ErrNoRows):
		t.Fatalf("reading the row of %q: %v", key, err)
	}
	return r
}

// handOff is a key held by one Locker and a ticket of another queued
// behind it.
type handOff struct {
	table  string
	admin  *pgxpool.Pool
	holder lock.Lease
	hw     *wire // the holder's Locker's wire
	l      *pglock.Locker
	w      *wire // the ticket's Locker's wire
	ticket lock.Ticket
	na     *lock.NotAcquiredError // the ticket's refused take
}

// queueOne holds key "k" for held and queues one ticket behind it, which
// asks for ttl.
func queueOne(t *testing.T, held, ttl time.Duration) *handOff {
	t.Helper()
	h := &handOff{table: testTable(t)}
	url := postgresURL(t)
	h.admin = newPool(t, url, nil)
	holder, hw := newLockerOn(t, url, pglock.WithTable(h.table), pglock.WithQueue())
	h.hw = hw
	warm, err := holder.TryAcquire(t.Context(), "warm-up", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Release(t.Context()); err != nil { // pgx prepares the release
		t.Fatal(err)
	}
	if h.holder, err = holder.TryAcquire(t.Context(), "k", held); err != nil {
		t.Fatal(err)
	}
	h.l, h.w = newLockerOn(t, url, pglock.WithTable(h.table), pglock.WithQueue())
	if h.ticket, err = h.l.Queue(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.ticket.Close() })
	_, err = h.ticket.TryAcquire(t.Context(), ttl)
	if !errors.As(err, &h.na) {
		t.Fatalf("a ticket's take of a held key: %v, want a *NotAcquiredError", err)
	}
	return h
}

// take waits for the ticket's wake-up and takes the key with it.
func (h *handOff) take(t *testing.T, ttl time.Duration) lock.Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := h.ticket.Wait(ctx, h.na); err != nil {
		t.Fatalf("the head's Wait after the release: %v", err)
	}
	le, err := h.ticket.TryAcquire(ctx, ttl)
	if err != nil {
		t.Fatalf("the head's TryAcquire after the release: %v", err)
	}
	return le
}

// handShort queues a ticket asking for asked behind a holding, has the
// ticket's Locker prepare the refresh (so that a fault armed for the
// head's refresh hits it, not a Parse), and releases the holding, which
// hands the key to the ticket. It returns the handed row.
func handShort(t *testing.T, asked time.Duration) (*handOff, leaseRow) {
	t.Helper()
	h := queueOne(t, time.Minute, asked)
	warm, err := h.l.TryAcquire(t.Context(), "warm-up", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Refresh(t.Context(), time.Minute); err != nil { // pgx prepares the refresh
		t.Fatal(err)
	}
	if err := warm.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	return h, h.release(t)
}

// release releases the holding, which hands the key to the ticket, and
// returns the handed row.
func (h *handOff) release(t *testing.T) leaseRow {
	t.Helper()
	if err := h.holder.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	handed := readRow(t, h.admin, h.table, "k")
	if !handed.found || !handed.handed {
		t.Fatalf("after the release the key's row is %+v, want one handed to the head", handed)
	}
	return handed
}

// checkHanded checks that le holds the key's row, handed over by a
// release of a lease with token before: a greater token, and a Deadline
// no later than the row's expiry and not much shorter than ttl.
func checkHanded(t *testing.T, h *handOff, le lock.Lease, before uint64, ttl time.Duration) {
	t.Helper()
	row := readRow(t, h.admin, h.table, "k")
	switch {
	case !row.found:
		t.Fatal("the head holds a lease but the key has no row")
	case uint64(row.token) != le.Token():
		t.Errorf("the head's lease has token %d, the row %d", le.Token(), row.token)
	case le.Token() <= before:
		t.Errorf("the head's token %d is not greater than the released one, %d", le.Token(), before)
	}
	deadline := le.(lock.Deadliner).Deadline()
	if deadline.After(row.expires) {
		t.Errorf("the head's Deadline %v is later than the row's expiry %v", deadline, row.expires)
	}
	if left := time.Until(deadline); left < ttl/2 {
		t.Errorf("the head's lease has %v left of the %v asked for", left, ttl)
	}
}

// A release hands the key to the head: the head's TryAcquire returns it
// with no request, with a greater token and a Deadline within the row's
// expiry, and the ticket's Close leaves the lease alone.
func TestHandOff(t *testing.T) {
	const ttl = 30 * time.Second
	h := queueOne(t, time.Minute, ttl)
	if err := h.holder.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if row := readRow(t, h.admin, h.table, "k"); !row.found || !row.handed || uint64(row.token) <= h.holder.Token() {
		t.Fatalf("after the release the key's row is %+v, want one handed to the head with a token above %d", row, h.holder.Token())
	}
	before := h.w.RoundTrips()
	le := h.take(t, ttl)
	if n := h.w.RoundTrips() - before; n != 0 {
		t.Errorf("the head made %d round trips to take a key handed to it, want 0", n)
	}
	checkHanded(t, h, le, h.holder.Token(), ttl)
	if q := queueLen(t, h.admin, h.table, "k"); q != 0 {
		t.Errorf("the queue holds %d waiters after the hand-off, want 0", q)
	}
	if err := h.ticket.Close(); err != nil {
		t.Fatal(err)
	}
	if err := le.Refresh(t.Context(), ttl); err != nil {
		t.Fatalf("Refresh of the handed lease after the ticket's Close: %v", err)
	}
	if err := le.Release(t.Context()); err != nil {
		t.Fatalf("Release of the handed lease: %v", err)
	}
	if row := readRow(t, h.admin, h.table, "k"); row.found {
		t.Errorf("the key's row is still there after the head's release: %+v", row)
	}
}

// A head that was handed the key and gives up before using it (its
// context ended: Acquire closes the ticket) gives the key back, and its
// Close wakes the next waiter, who takes it long before the handed
// lease's expiry.
func TestHandOffHeadLeaves(t *testing.T) {
	const ttl = time.Minute
	h := queueOne(t, time.Minute, ttl)
	next := newLocker(t, pglock.WithTable(h.table), pglock.WithQueue())
	behind := testenv.StartBehind(t, next, "k")
	awaitQueueLen(t, h.admin, h.table, "k", 2, 10*time.Second)
	if err := h.holder.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if row := readRow(t, h.admin, h.table, "k"); !row.found || !row.handed {
		t.Fatalf("after the release the key's row is %+v, want one handed to the head", row)
	}
	left := time.Now()
	if err := h.ticket.Close(); err != nil {
		t.Fatal(err)
	}
	behind.AwaitKey(t, left, "the head's Close", 10*time.Second)
}

// A head that missed the notification of its hand-off (here: the reply of
// its last take was lost, so it cannot tell the lease's deadline; a
// listening connection that was down does the same) gets the key from its
// next take, which recognises the row handed to it.
func TestHandOffMissedNotification(t *testing.T) {
	const ttl = 30 * time.Second
	h := queueOne(t, time.Minute, ttl)
	h.w.LoseNextReply()
	if _, err := h.ticket.TryAcquire(t.Context(), ttl); err == nil || errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("a take whose reply was lost: %v, want an error of unknown outcome", err)
	}
	if err := h.holder.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := h.w.RoundTrips()
	le, err := h.ticket.TryAcquire(t.Context(), ttl)
	if err != nil {
		t.Fatalf("the head's take after a hand-off it could not use: %v", err)
	}
	if h.w.RoundTrips() == before {
		t.Error("the head made no request: it cannot know the handed lease's deadline, want its take")
	}
	checkHanded(t, h, le, h.holder.Token(), ttl)
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A head that dies (its Locker closed: no listening connection, no
// leave) after it was handed the key holds it until the handed lease
// expires, the TTL it asked for after its last take; the waiter behind it
// takes the key then (it comes back at the holder's deadline, finds the
// handed lease, and comes back at its expiry).
func TestHandOffDeadHead(t *testing.T) {
	const (
		held = 3 * time.Second
		ttl  = 10 * time.Second // the release comes within half of it, even under -race
	)
	h := queueOne(t, held, ttl)
	next := newLocker(t, pglock.WithTable(h.table), pglock.WithQueue())
	behind := testenv.StartBehind(t, next, "k")
	awaitQueueLen(t, h.admin, h.table, "k", 2, 10*time.Second)
	if err := h.l.Close(); err != nil {
		t.Fatal(err)
	}
	// On a loaded machine the holding may have expired by now; its row
	// is still there (only a take by the head, now dead, would take it
	// over), and the release hands it over all the same.
	if err := h.holder.Release(t.Context()); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		t.Fatal(err)
	}
	row := readRow(t, h.admin, h.table, "k")
	if !row.found || !row.handed {
		t.Fatalf("after the release the key's row is %+v, want one handed to the dead head", row)
	}
	behind.AwaitKey(t, time.Now(), "the release", time.Until(row.expires)+6*conformance.SchedulingSlack)
	if after := readRow(t, h.admin, h.table, "k"); after.found && after.token == row.token {
		t.Errorf("the dead head's row is still there: %+v", after)
	}
}

// A release whose reply is lost after it handed the key over: the retry
// (ErrNotHeld: pglock keeps no evidence of its release) deletes nothing,
// and the head keeps the key.
func TestHandOffReleaseReplyLost(t *testing.T) {
	const ttl = 30 * time.Second
	h := queueOne(t, time.Minute, ttl)
	h.hw.LoseNextReply()
	if err := h.holder.Release(t.Context()); err == nil || errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("a release whose reply was lost: %v, want an error of unknown outcome", err)
	}
	if err := h.holder.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("the retried release: %v, want ErrNotHeld", err)
	}
	le := h.take(t, ttl)
	checkHanded(t, h, le, h.holder.Token(), ttl)
	if err := le.Refresh(t.Context(), ttl); err != nil {
		t.Fatalf("Refresh of the handed lease after the retried release: %v", err)
	}
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A head whose last take is too old (less than half of its TTL would be
// left) is not handed the key: the release wakes it, and it takes the
// key with a take of its own, for its full TTL.
func TestHandOffStaleHead(t *testing.T) {
	const ttl = 30 * time.Second
	h := queueOne(t, time.Minute, ttl)
	// As if the head's take were sent 20 s ago: its TTL has less than
	// half left.
	if _, err := h.admin.Exec(t.Context(), fmt.Sprintf("UPDATE %s_waiters SET took_at = took_at - interval '20 seconds'", h.table)); err != nil {
		t.Fatal(err)
	}
	if err := h.holder.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if row := readRow(t, h.admin, h.table, "k"); row.found {
		t.Fatalf("the release of a key whose head is stale left a row: %+v", row)
	}
	before := h.w.RoundTrips()
	sent := time.Now()
	le := h.take(t, ttl)
	if n := h.w.RoundTrips() - before; n != 1 {
		t.Errorf("the stale head made %d round trips, want 1 (its take)", n)
	}
	if le.Token() <= h.holder.Token() {
		t.Errorf("the stale head's token %d is not greater than the released %d", le.Token(), h.holder.Token())
	}
	if d := le.(lock.Deadliner).Deadline(); d.Before(sent.Add(ttl)) {
		t.Errorf("the stale head's Deadline is %v after its take was sent, want its full TTL %v", d.Sub(sent), ttl)
	}
	if row := readRow(t, h.admin, h.table, "k"); !row.found || uint64(row.token) != le.Token() {
		t.Errorf("the stale head's row is %+v, want the one its take made (token %d)", row, le.Token())
	}
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A head handed a lease with little left of the TTL it now asks for
// refreshes it before returning it (one request), so that Acquire never
// returns a lease much shorter than asked; if the handed row is gone by
// then, the head goes on with its take.
func TestHandOffShortLease(t *testing.T) {
	const (
		asked = 4 * time.Second // the release comes within half of it
		ttl   = time.Minute     // the head's next TryAcquire asks for more
	)
	for _, gone := range []bool{false, true} {
		t.Run(fmt.Sprintf("row gone %v", gone), func(t *testing.T) {
			h, handed := handShort(t, asked)
			if gone { // as ForceRelease would
				if _, err := h.admin.Exec(t.Context(), fmt.Sprintf("DELETE FROM %s WHERE key = $1", h.table), []byte("k")); err != nil {
					t.Fatal(err)
				}
			}
			before := h.w.RoundTrips()
			le := h.take(t, ttl)
			want := int64(1) // the refresh
			if gone {
				want = 2 // the refresh, then the take
			}
			if n := h.w.RoundTrips() - before; n != want {
				t.Errorf("the head made %d round trips, want %d", n, want)
			}
			if gone && le.Token() <= uint64(handed.token) {
				t.Errorf("the head's token %d after the handed row was deleted, want above the handed %d", le.Token(), handed.token)
			}
			checkHanded(t, h, le, h.holder.Token(), ttl)
			if err := le.Release(t.Context()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A notification of a hand-off that reaches the head late (its listening
// connection is slow), after the handed row is gone (it expired, or was
// force-released) and after the head's next take was refused because
// another Locker took the key: the head's ticket must not return the
// stale token as a lease. Its Deadline would count from the refused take
// (later than the gone row's expiry), and two holders would believe they
// hold the key.
func TestHandOffLateNotification(t *testing.T) {
	for _, how := range []string{"expired", "force released"} {
		t.Run(how, func(t *testing.T) {
			const ttl = 10 * time.Second // the release comes within half of it, even under -race
			h := queueOne(t, time.Minute, ttl)
			deliver := h.w.HoldNotifications(t)
			handed := h.release(t)
			other := newLocker(t, pglock.WithTable(h.table))
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			if how == "force released" {
				if err := other.ForceRelease(ctx, "k"); err != nil {
					t.Fatal(err)
				}
			}
			// Unqueued: it takes the key once the handed row is gone (at
			// its expiry, or now).
			taken, err := lock.Acquire(ctx, other, "k", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = taken.Release(context.Background()) }()
			if taken.Token() <= uint64(handed.token) {
				t.Fatalf("the other Locker's token %d, want above the handed %d", taken.Token(), handed.token)
			}
			// The head comes back (its wait bounded by the holder's
			// deadline, or another wake-up) before the notification: its
			// take finds the key held.
			le, err := h.ticket.TryAcquire(ctx, ttl)
			if err == nil {
				_ = le.Release(context.Background())
				t.Fatalf("the head's take while another Locker holds the key returned a lease with token %d", le.Token())
			}
			if !errors.As(err, &h.na) {
				t.Fatalf("the head's take while another Locker holds the key: %v, want a *NotAcquiredError", err)
			}
			// Drain the wake-up the listening connection's start left (a
			// spurious one), so that the next Wait returns on the late
			// notification.
			drain, stop := context.WithTimeout(ctx, 100*time.Millisecond)
			_ = h.ticket.Wait(drain, h.na)
			stop()
			deliver()
			if err := h.ticket.Wait(ctx, h.na); err != nil {
				t.Fatalf("the head's Wait for the late notification: %v", err)
			}
			le, err = h.ticket.TryAcquire(ctx, ttl)
			if err == nil {
				t.Errorf("the head returned a lease with the stale handed token %d (Deadline in %v) while the other Locker holds token %d: two holders",
					le.Token(), time.Until(le.(lock.Deadliner).Deadline()), taken.Token())
				return
			}
			if !errors.Is(err, lock.ErrNotAcquired) {
				t.Fatalf("the head's take after the late notification: %v, want ErrNotAcquired", err)
			}
		})
	}
}

// Queued Lockers (served by hand-offs), an unqueued Locker's Acquire, and
// TryAcquire and ClaimFingerprint (which never look at the queue) on one
// key, some giving up mid-wait: never two holders at once, and every
// holder's token is greater than the one before it (fencing), hand-offs
// included.
func TestHandOffMixedExclusion(t *testing.T) {
	table := testTable(t)
	q1 := newLocker(t, pglock.WithTable(table), pglock.WithQueue())
	q2 := newLocker(t, pglock.WithTable(table), pglock.WithQueue())
	plain := newLocker(t, pglock.WithTable(table))
	const (
		workers = 12
		rounds  = 6
		ttl     = 30 * time.Second // no holding expires: an overlap is a bug
	)
	var (
		mu      sync.Mutex
		holding bool
		last    uint64
		served  atomic.Int32
	)
	enter := func(who string, le lock.Lease) {
		mu.Lock()
		defer mu.Unlock()
		if holding {
			t.Errorf("%s took the key (token %d) while another holds it", who, le.Token())
		}
		if le.Token() <= last {
			t.Errorf("%s holds token %d, not greater than the previous holder's %d", who, le.Token(), last)
		}
		holding, last = true, max(last, le.Token())
		served.Add(1)
	}
	leave := func() {
		mu.Lock()
		holding = false
		mu.Unlock()
	}
	hold := func(who string, le lock.Lease) {
		enter(who, le)
		time.Sleep(time.Millisecond) // the critical section
		leave()
		if err := le.Release(context.Background()); err != nil {
			t.Errorf("%s: release: %v", who, err)
		}
	}
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for r := range rounds {
				who := fmt.Sprintf("worker %d round %d", i, r)
				switch i % 4 {
				case 0, 1, 2: // Acquire: queued (two Lockers) or not
					l := []*pglock.Locker{q1, q2, plain}[i%3]
					ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
					if r%3 == 2 { // gives up after a while, perhaps handed the key
						ctx, cancel = context.WithTimeout(t.Context(), time.Duration(1+r+i)*time.Millisecond)
					}
					le, err := lock.Acquire(ctx, l, "k", ttl)
					if err == nil {
						hold(who, le)
					} else if !errors.Is(err, lock.ErrNotAcquired) || ctx.Err() == nil {
						t.Errorf("%s: Acquire: %v", who, err)
					}
					cancel()
				case 3: // never waits
					var (
						le  lock.Lease
						err error
					)
					if r%2 == 0 {
						le, err = q1.TryAcquire(t.Context(), "k", ttl)
					} else {
						le, _, _, err = plain.ClaimFingerprint(t.Context(), "k", ttl, []byte{byte(i)})
					}
					if err == nil {
						hold(who, le)
					} else if !errors.Is(err, lock.ErrNotAcquired) {
						t.Errorf("%s: take: %v", who, err)
					}
				}
			}
		})
	}
	wg.Wait()
	if served.Load() < workers*rounds/2 {
		t.Errorf("only %d of %d attempts were served", served.Load(), workers*rounds)
	}
	admin := newPool(t, postgresURL(t), nil)
	if row := readRow(t, admin, table, "k"); row.found {
		t.Errorf("the key's row is still there after every holder released: %+v (handed to a waiter that left?)", row)
	}
	if n := queueLen(t, admin, table, "k"); n != 0 {
		t.Errorf("the queue holds %d waiters after every waiter left, want 0", n)
	}
}

// Tables made before the direct hand-off (no handed_to, no took_at and
// ttl; here with a waiter an older process queued) are migrated by the
// first statement that misses a column, and a waiter whose last take is
// not recorded (took_at NULL) is never handed the key: the release only
// wakes it.
func TestHandOffOldTables(t *testing.T) {
	table := testTable(t)
	admin := newPool(t, postgresURL(t), nil)
	for _, ddl := range []string{
		fmt.Sprintf(`CREATE TABLE %s (key bytea PRIMARY KEY, token bigint NOT NULL, expires_at timestamptz NOT NULL,
	waiters boolean NOT NULL DEFAULT false, record bytea, fingerprint bytea)`, table),
		fmt.Sprintf("CREATE SEQUENCE %s_token AS bigint CACHE 1 NO CYCLE", table),
		fmt.Sprintf(`CREATE TABLE %s_waiters (key bytea NOT NULL, id bigint NOT NULL, arrived timestamptz NOT NULL,
	expires_at timestamptz NOT NULL, PRIMARY KEY (key, id))`, table),
		fmt.Sprintf("INSERT INTO %s_waiters VALUES ('k', 42, clock_timestamp(), now() + interval '1 minute')", table),
	} {
		if _, err := admin.Exec(t.Context(), ddl); err != nil {
			t.Fatal(err)
		}
	}
	l := newLocker(t, pglock.WithTable(table), pglock.WithQueue())
	le, err := l.TryAcquire(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatalf("TryAcquire on tables made before the hand-off: %v", err)
	}
	if err := le.Release(t.Context()); err != nil {
		t.Fatalf("queued Release on tables made before the hand-off: %v", err)
	}
	if row := readRow(t, admin, table, "k"); row.found {
		t.Errorf("the release handed the key to a waiter with no recorded take: %+v", row)
	}
	if n := queueLen(t, admin, table, "k"); n != 1 {
		t.Errorf("the queue holds %d waiters after the release, want the old one", n)
	}
	// A queued take and a leave on the migrated tables.
	tk, err := l.Queue(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tk.TryAcquire(t.Context(), time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Errorf("a ticket behind the old waiter: %v, want ErrNotAcquired", err)
	}
	if err := tk.Close(); err != nil {
		t.Fatal(err)
	}
	if n := queueLen(t, admin, table, "k"); n != 1 {
		t.Errorf("the queue holds %d waiters after the ticket left, want the old one", n)
	}
}

// The refresh a head sends before returning a short handed lease loses
// its reply (unknown outcome; the refresh applied): TryAcquire returns
// the error, and then either the ticket's next take finds the row handed
// to it and returns it, or its Close gives the row back, so the key is
// never left held by nobody until the handed lease's expiry.
func TestHandOffRefreshReplyLost(t *testing.T) {
	const (
		asked = 4 * time.Second // the release comes within half of it
		ttl   = time.Minute     // the head's next TryAcquire asks for more: it refreshes first
	)
	for _, then := range []string{"take again", "close"} {
		t.Run(then, func(t *testing.T) {
			h, handed := handShort(t, asked)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := h.ticket.Wait(ctx, h.na); err != nil {
				t.Fatal(err)
			}
			h.w.LoseNextReply()
			if le, err := h.ticket.TryAcquire(ctx, ttl); err == nil || errors.Is(err, lock.ErrNotAcquired) {
				t.Fatalf("the head's TryAcquire whose refresh lost its reply: %v, %v, want an error of unknown outcome", le, err)
			}
			switch then {
			case "take again":
				le, err := h.ticket.TryAcquire(ctx, ttl)
				if err != nil {
					t.Fatalf("the head's take after its refresh lost its reply: %v", err)
				}
				if le.Token() != uint64(handed.token) {
					t.Errorf("the head's take returned token %d, want the handed %d", le.Token(), handed.token)
				}
				checkHanded(t, h, le, h.holder.Token(), ttl)
				if err := le.Release(t.Context()); err != nil {
					t.Fatal(err)
				}
			case "close":
				if err := h.ticket.Close(); err != nil {
					t.Fatal(err)
				}
				if row := readRow(t, h.admin, h.table, "k"); row.found {
					t.Errorf("the head's Close left the row handed to it: %+v", row)
				}
			}
		})
	}
}

// During a rolling upgrade a process of the previous version (whose take
// knows no handed_to column) takes over a handed row that expired unused
// (its head paused past its TTL, or missed the notification): the row
// keeps handed_to, and the head, coming back, must not take the other
// process's lease for its own.
func TestHandOffOlderProcessTakesOver(t *testing.T) {
	const ttl = 30 * time.Second
	h := queueOne(t, time.Minute, ttl)
	h.w.HoldNotifications(t) // the head does not hear of the hand-off
	handed := h.release(t)
	// The handed lease runs out unused (as if its TTL had passed)...
	if _, err := h.admin.Exec(t.Context(), fmt.Sprintf("UPDATE %s SET expires_at = now() - interval '1 millisecond' WHERE key = $1", h.table), []byte("k")); err != nil {
		t.Fatal(err)
	}
	// ...and the previous version's take (its takeover, without
	// handed_to) takes the key.
	var old int64
	err := h.admin.QueryRow(t.Context(), fmt.Sprintf(`INSERT INTO %[1]s AS l (key, token, expires_at, fingerprint)
SELECT $1::bytea, nextval('%[1]s_token'), now() + interval '1 minute', NULL
ON CONFLICT (key) DO UPDATE SET
	token       = CASE WHEN l.expires_at <= now() THEN excluded.token ELSE l.token END,
	expires_at  = CASE WHEN l.expires_at <= now() THEN excluded.expires_at ELSE l.expires_at END,
	record      = CASE WHEN l.expires_at <= now() THEN NULL ELSE l.record END,
	fingerprint = CASE WHEN l.expires_at <= now() THEN excluded.fingerprint ELSE l.fingerprint END,
	waiters     = CASE WHEN l.expires_at <= now() THEN excluded.waiters ELSE l.waiters OR l.record IS NULL END
RETURNING token`, h.table), []byte("k")).Scan(&old)
	if err != nil {
		t.Fatal(err)
	}
	if old <= handed.token {
		t.Fatalf("the older process's take kept token %d, want it to take the expired row over", old)
	}
	le, err := h.ticket.TryAcquire(t.Context(), ttl)
	if err == nil {
		t.Fatalf("the head took the older process's lease (token %d, the older process's %d) for its own: two holders", le.Token(), old)
	}
	if !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("the head's take of a key another process holds: %v, want ErrNotAcquired", err)
	}
}

// A handed lease completes (an idempotency record): Claim finds the
// record, a queued waiter behind it is refused for the record's
// retention, and its Close leaves the record alone.
func TestHandOffCompleted(t *testing.T) {
	const (
		ttl       = 30 * time.Second
		retention = time.Minute
	)
	h := queueOne(t, time.Minute, ttl)
	if err := h.holder.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	le := h.take(t, ttl)
	if err := h.l.Complete(t.Context(), le, []byte("done"), retention); err != nil {
		t.Fatalf("Complete of a handed lease: %v", err)
	}
	next, err := h.l.Queue(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	_, err = next.TryAcquire(t.Context(), ttl)
	var na *lock.NotAcquiredError
	if !errors.As(err, &na) || na.Remaining < retention/2 {
		t.Errorf("a queued take of a completed key: %v, want a *NotAcquiredError for about the retention %v", err, retention)
	}
	if err := next.Close(); err != nil {
		t.Fatal(err)
	}
	lease, record, err := h.l.Claim(t.Context(), "k", ttl)
	if lease != nil || string(record) != "done" || err != nil {
		t.Errorf("Claim of a key completed by a handed lease: %v, %q, %v, want the record", lease, record, err)
	}
}

// Concurrent calls on a handed lease (returned without a request): a
// Refresh racing the Release succeeds or reports ErrNotHeld, the Release
// succeeds, and the key's row is gone.
func TestHandOffConcurrentCalls(t *testing.T) {
	const ttl = 30 * time.Second
	h := queueOne(t, time.Minute, ttl)
	if err := h.holder.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	le := h.take(t, ttl)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			if i == 0 {
				errs[i] = le.Release(t.Context())
			} else {
				errs[i] = le.Refresh(t.Context(), ttl)
			}
		})
	}
	wg.Wait()
	if errs[0] != nil {
		t.Errorf("Release racing Refresh: %v", errs[0])
	}
	for _, err := range errs[1:] {
		if err != nil && !errors.Is(err, lock.ErrNotHeld) {
			t.Errorf("Refresh racing Release: %v, want nil or ErrNotHeld", err)
		}
	}
	if row := readRow(t, h.admin, h.table, "k"); row.found {
		t.Errorf("the key's row is still there after the handed lease's Release: %+v", row)
	}
}

// The head's listening connection breaks while it waits in Acquire and
// the holder releases: whether the release hands the key to the head (its
// notification lost) or to the waiter behind (the head left the queue to
// poll), both get the key long before a handed lease would expire.
func TestHandOffListenerBreaks(t *testing.T) {
	const ttl = 30 * time.Second // a stranded handed row would hold the key this long
	table := testTable(t)
	url := postgresURL(t)
	admin := newPool(t, url, nil)
	holderL := newLocker(t, pglock.WithTable(table), pglock.WithQueue())
	held, err := holderL.TryAcquire(t.Context(), "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	headL, w := newLockerOn(t, url, pglock.WithTable(table), pglock.WithQueue())
	got := make(chan error, 1)
	go func() {
		le, err := lock.Acquire(t.Context(), headL, "k", ttl)
		if err == nil {
			err = le.Release(context.Background())
		}
		got <- err
	}()
	awaitQueueLen(t, admin, table, "k", 1, 10*time.Second)
	behind := testenv.StartBehind(t, newLocker(t, pglock.WithTable(table), pglock.WithQueue()), "k")
	awaitQueueLen(t, admin, table, "k", 2, 10*time.Second)
	w.BreakListener(t)
	released := time.Now()
	if err := held.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Logf("after the release: %d waiters queued, row %+v", queueLen(t, admin, table, "k"), readRow(t, admin, table, "k"))
	bound := 10 * time.Second
	behind.AwaitKey(t, released, "the release", bound)
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("the head's Acquire: %v", err)
		}
		if d := time.Since(released); d > bound {
			t.Errorf("the head got the key %v after the release, want at most %v", d, bound)
		}
	case <-time.After(3 * bound):
		t.Fatalf("the head did not get the key within %v of the release", 3*bound)
	}
}
