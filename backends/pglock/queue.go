package pglock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Queued waiting ([WithQueue]).
//
// The waiters of a key are rows of the table <table>_waiters, beside the
// lease table:
//
//	key bytea, id bigint, arrived timestamptz, expires_at timestamptz,
//	took_at timestamptz, ttl bigint, PRIMARY KEY (key, id)
//
// ordered by (arrived, id): the database's clock_timestamp() when the
// waiter joined; took_at and ttl are the time and the TTL (µs) of the
// waiter's last take. A ticket's take (ticketTake) takes the key only when it
// is free and no live waiter is ahead of the ticket, with the ordinary
// take's INSERT … ON CONFLICT (same token, expiry and takeover); otherwise
// it puts the ticket in the queue (a waiter keeps its place) and sets its
// expiry to the time it promises to come back, the holder's remaining TTL
// (or the head's expiry, when the key is free and a waiter is ahead), plus
// queueGrace. Every waiter comes back by then (lock.Acquire never waits
// past NotAcquiredError.Remaining), so a live waiter never expires, and a
// dead one (a killed process, a paused client) leaves the queue at most
// queueGrace after the holder's TTL. Expired waiters are ignored by every
// statement that reads the head, deleted by takes of their key and by the
// cleaner.
//
// A release hands the key straight to the live head of the queue (the
// direct hand-off): it deletes the holder's row and inserts the head's,
// with a new token (the key's advisory lock is held, so fencing order
// holds), the expiry the head's last take would have given it had it
// succeeded (took_at + ttl: that take was sent before took_at), the
// waiters flag set when other waiters remain, and handed_to naming the
// head (its id XOR the token: a takeover by an older version, which
// leaves handed_to as it is, changes the token and so names nobody),
// whose entry it deletes. It then publishes pg_notify(channel,
// "<hash of key>:<id of the head>:<token>"). The notifier wakes only the
// subscription of that ticket (and every plain subscription, which any
// notification of the key wakes) and gives it the token, and the ticket's
// next TryAcquire returns the lease without a request: its Deadline is
// the send time of the ticket's last take (whose reply came back) plus
// its TTL, refreshed first when less than a quarter of the TTL asked for
// is left. A notification of a token no greater than the sequence's last
// value at the ticket's last take is late (a slow listening connection),
// of a hand-off whose row that take found gone, and is ignored. A
// hand-off thus costs the release alone, where a wake-up costs the
// release and the head's take.
//
// The release only wakes the head ("<hash of key>:<id of the head>"), which
// then takes the key, when the head's last take leaves half its TTL or
// less (a head that waited long: the lease would be short) or was made
// before the direct hand-off (took_at NULL). A ticket whose notification
// was lost (its listening connection was down) or whose last take failed
// finds the row handed to it with its next take, which returns it with
// the row's remaining TTL. A ticket that leaves (Close) deletes its entry
// and gives back a live row handed to it; if it was the head or gave a row
// back, and the key is free, it notifies the next head, so a head that
// gives up never strands the queue. A head that dies after a hand-off
// holds the key until its lease expires, as if its last take had taken
// it: the waiters behind come back at the former holder's deadline, find
// the handed row and take the key at its expiry.
//
// Each of these statements is sent after SELECT pg_advisory_xact_lock on
// the key (the lock the ordinary take holds), in one pipeline with one
// Sync: one round trip and one implicit transaction. The lock must come
// before the statement, not inside it, because a READ COMMITTED statement
// reads with the snapshot taken when it starts: taken after the lock, the
// snapshot includes every waiter that a take of the key queued before, so
// a release never misses a waiter that queued while it waited for the
// row.

// queueGrace is how long after the time it promised to come back a waiter
// stays in the queue: room for a slow scheduler, a GC pause and the round
// trip of its next attempt.
const queueGrace = 2 * time.Second

// handOffLeft: a release hands the key to the head only while more than
// 1/handOffLeft of the TTL of the head's last take is left (counted from
// that take); otherwise the head is only woken, and takes the key with a
// TTL of its own.
const handOffLeft = 2

// handOffRefresh: a ticket handed the key refreshes it before returning it
// when less than 1/handOffRefresh of the TTL asked for is left by its own
// clock (a late notification, a slow scheduler), so that Acquire never
// returns a lease much shorter than asked.
const handOffRefresh = 4

// leaveTimeout bounds Close's request.
const leaveTimeout = 5 * time.Second

// takeLockSQL takes the key's take lock until the implicit transaction of
// the pipeline ends. $1,$2 the advisory lock.
const takeLockSQL = "SELECT pg_advisory_xact_lock($1::int4, $2::int4)"

// WithQueue makes [lock.Acquire] wait in a first-come-first-served queue
// per key (the Locker implements [lock.Queuer]): a release hands the key
// straight to the waiter at the head of the queue (a new lease with a new
// token, whose TTL counts from the head's last attempt) and wakes it
// alone, so a hand-off costs about two requests (the release and the
// served worker's next queued take) whatever the number of waiters, where
// unqueued waiting costs one take per waiter per release. A head whose
// last attempt leaves half its TTL or less is only woken, and takes the
// key itself (a third request). The price: a release takes the key's
// advisory lock and reads the queue (same round trip), waiters are rows of
// a second table (<table>_waiters, made by [Locker.Migrate]) whose writes
// are WAL like the leases', a release of a waited-for key sends a NOTIFY
// even when the failed take that marked it is long gone (as long as a live
// waiter is queued), and a head that dies while queued may be handed the
// key, which it then holds until its lease expires (the TTL it asked for,
// from its last attempt) as if that attempt had taken it. Lockers with and
// without WithQueue may share keys and a table: unqueued waiters are woken
// by every release, and queued waiters by every release of an unqueued
// Locker (then each sends a take, and the head's succeeds). TryAcquire
// never looks at the queue.
func WithQueue() Option {
	return func(c *config) error { c.queued = true; return nil }
}

// queueStatements builds the queued statements of table t, its sequence
// seq and its waiters table w.
func (s *statements) queueStatements(t, seq, w string) {
	const us = "* interval '1 microsecond'"
	left := func(col, now string) string {
		return fmt.Sprintf("(extract(epoch FROM %s - %s) * 1000000)::bigint", col, now)
	}
	// $1 key, $2 TTL µs, $3 waiter id, $4 queueGrace µs. Returns whether
	// it took the key, the token (the holder's when it did not), the µs
	// to wait: the holder's remaining TTL, or the head's when the key is
	// free (or, when it took the key, the lease's remaining TTL), and the
	// sequence's last token: a release that hands the key to the ticket
	// after this take draws a greater one (it takes the key's advisory
	// lock after this take let it go), so a notification of a smaller
	// token is late, of a row this take saw gone. y is a live row a
	// release handed to the ticket (a notification the ticket missed): the
	// ticket takes it as it is. h is the live head; o says whether the
	// ticket is first and whether other waiters remain; t is the ordinary
	// take (whose new row is marked as waited for when others remain, and
	// names the ticket in handed_to, so that its leave, by Close or before
	// a retry, undoes a take whose reply it never got), m marks a held row
	// as waited for when a waiter is ahead; q queues the ticket (or moves
	// its expiry; an expired entry goes to the back) and records the
	// take's time and TTL for a hand-off, d dequeues it after a take and
	// deletes expired waiters.
	s.ticketTake = fmt.Sprintf(`WITH y AS (SELECT token, %[5]s AS rem FROM %[1]s
	WHERE key = $1::bytea AND handed_to = ($3::bigint # token) AND record IS NULL AND expires_at > now()),
h AS (SELECT id, %[4]s AS rem FROM %[3]s
	WHERE key = $1::bytea AND expires_at > clock_timestamp() ORDER BY arrived, id LIMIT 1),
o AS (SELECT NOT EXISTS (SELECT FROM h WHERE id <> $3::bigint) AS first, EXISTS (SELECT FROM y) AS mine,
	EXISTS (SELECT FROM %[3]s WHERE key = $1::bytea AND id <> $3::bigint AND expires_at > clock_timestamp()) AS more),
t AS (INSERT INTO %[1]s AS l (key, token, expires_at, waiters, handed_to)
	SELECT $1::bytea, v.token, now() + $2::bigint %[6]s, o.more, $3::bigint # v.token
	FROM o, LATERAL (SELECT nextval('%[2]s') AS token WHERE o.first AND NOT o.mine) v
	ON CONFLICT (key) DO UPDATE SET `+takeOver+`
	RETURNING token, token = currval('%[2]s') AS took, %[5]s AS rem),
m AS (UPDATE %[1]s SET waiters = true
	WHERE key = $1::bytea AND record IS NULL AND expires_at > now() AND NOT (SELECT first OR mine FROM o)
	RETURNING token, %[5]s AS rem),
c AS (SELECT token, %[5]s AS rem FROM %[1]s
	WHERE key = $1::bytea AND expires_at > now() AND NOT (SELECT first OR mine FROM o)),
r AS (SELECT EXISTS (SELECT FROM y) OR coalesce((SELECT took FROM t), false) AS took,
	coalesce((SELECT token FROM y), (SELECT token FROM t), (SELECT token FROM m), (SELECT token FROM c), 0) AS token,
	greatest(coalesce((SELECT rem FROM y), (SELECT rem FROM t), (SELECT rem FROM m), (SELECT rem FROM c), (SELECT rem FROM h), 0), 0) AS rem),
q AS (INSERT INTO %[3]s AS w (key, id, arrived, expires_at, took_at, ttl)
	SELECT $1::bytea, $3::bigint, clock_timestamp(), clock_timestamp() + (r.rem + $4::bigint) %[6]s, clock_timestamp(), $2::bigint
	FROM r WHERE NOT r.took
	ON CONFLICT (key, id) DO UPDATE SET
	arrived    = CASE WHEN w.expires_at <= clock_timestamp() THEN excluded.arrived ELSE w.arrived END,
	expires_at = excluded.expires_at,
	took_at    = excluded.took_at,
	ttl        = excluded.ttl),
d AS (DELETE FROM %[3]s WHERE key = $1::bytea AND (id = $3::bigint AND (SELECT took FROM r)
	OR id <> $3::bigint AND expires_at <= clock_timestamp()))
SELECT took, token, rem, coalesce(pg_sequence_last_value('%[2]s'::regclass), 0) FROM r`, t, seq, w, left("expires_at", "clock_timestamp()"), left("expires_at", "now()"), us)

	// $1 key, $2 token, $3 channel, $4 payload. The release. When it
	// deleted the row and the live head of the queue took less than half
	// its TTL ago (h.fresh), it hands the key to the head (i): a new row
	// with a new token (the take lock is held: fencing order holds), the
	// expiry the head's last take would have given it, marked as waited
	// for when other waiters remain and as handed to the head (handed_to
	// is the head's id XOR the token), whose entry it deletes (x). It notifies "<payload>:<head>:<token>" after a
	// hand-off, "<payload>:<head>" when a head is queued but not handed
	// the key (it takes it), "<payload>" when only unqueued waiters
	// marked the row.
	s.releaseQueued = fmt.Sprintf(`WITH d AS (DELETE FROM %[1]s WHERE key = $1::bytea AND token = $2::bigint AND record IS NULL
	RETURNING expires_at > now() AS live, waiters),
h AS (SELECT id, took_at + ttl %[4]s AS until, took_at + ttl %[4]s / %[5]d > clock_timestamp() AS fresh FROM %[2]s
	WHERE key = $1::bytea AND expires_at > clock_timestamp() ORDER BY arrived, id LIMIT 1),
i AS (INSERT INTO %[1]s (key, token, expires_at, waiters, handed_to)
	SELECT $1::bytea, v.token, h.until,
	EXISTS (SELECT FROM %[2]s WHERE key = $1::bytea AND id <> h.id AND expires_at > clock_timestamp()), h.id # v.token
	FROM h, d, LATERAL (SELECT nextval('%[3]s') AS token WHERE h.fresh) v
	RETURNING token, handed_to # token AS head),
x AS (DELETE FROM %[2]s WHERE key = $1::bytea AND id = (SELECT head FROM i)),
n AS (SELECT pg_notify($3::text, $4::text || coalesce(':' || (SELECT id FROM h), '') || coalesce(':' || (SELECT token FROM i), '')) FROM d
	WHERE d.waiters OR EXISTS (SELECT FROM h))
SELECT live, (SELECT count(*) FROM n) FROM d`, t, w, seq, us, handOffLeft)

	// $1 key, $2 waiter id, $3 channel, $4 payload, $5 whether one of
	// the waiter's takes had an unknown outcome. Deletes the waiter, and a
	// live row a release handed to it or one of its own takes made whose
	// reply it never got (g); if it was the live head or gave a row back,
	// and the key is now free, notifies the next head (or,
	// when none is queued but unqueued waiters marked the row given back,
	// every waiter). After a take of unknown outcome (which may hold the
	// key with a lease nobody has) it notifies the next head whether or
	// not the key is free, so that it learns the key's remaining TTL.
	// Returns whether it deleted a row and whether it notified.
	s.leave = fmt.Sprintf(`WITH h AS (SELECT id FROM %[2]s
	WHERE key = $1::bytea AND expires_at > clock_timestamp() ORDER BY arrived, id LIMIT 1),
nx AS (SELECT id FROM %[2]s
	WHERE key = $1::bytea AND id <> $2::bigint AND expires_at > clock_timestamp() ORDER BY arrived, id LIMIT 1),
d AS (DELETE FROM %[2]s WHERE key = $1::bytea AND id = $2::bigint RETURNING id),
g AS (DELETE FROM %[1]s WHERE key = $1::bytea AND handed_to = ($2::bigint # token) AND record IS NULL AND expires_at > now()
	RETURNING waiters),
f AS (SELECT NOT EXISTS (SELECT FROM %[1]s WHERE key = $1::bytea AND expires_at > now()
	AND (handed_to IS DISTINCT FROM ($2::bigint # token) OR record IS NOT NULL)) AS free),
s AS (SELECT pg_notify($3::text, $4::text || coalesce(':' || (SELECT id FROM nx), '')) FROM f
	WHERE f.free AND (EXISTS (SELECT FROM nx) AND (EXISTS (SELECT FROM h WHERE id = $2::bigint) OR EXISTS (SELECT FROM g))
	OR coalesce((SELECT waiters FROM g), false))
	OR $5::boolean AND EXISTS (SELECT FROM nx))
SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM g) > 0, (SELECT count(*) FROM s) = 1`, t, w)

	// No argument: the cleaner's pass over the waiters.
	s.deleteWaiters = fmt.Sprintf(`DELETE FROM %s WHERE expires_at < clock_timestamp()`, w)
}

// locked runs stmt with args after takeLockSQL on key, in one pipeline
// (one round trip, one implicit transaction), and scans its one row into
// dest. It retries as [Locker.run] does.
func (l *Locker) locked(ctx context.Context, key string, stmt string, args []any, dest ...any) error {
	return l.run(ctx, func() error {
		b := &pgx.Batch{}
		b.Queue(takeLockSQL, l.class, int32(hash64(key)))
		b.Queue(stmt, args...)
		br := l.pool.SendBatch(ctx, b)
		_, err := br.Exec()
		if err == nil {
			err = br.QueryRow().Scan(dest...)
		}
		return errors.Join(err, br.Close())
	})
}

// errQueueOff is Queue's error on a Locker made without WithQueue.
var errQueueOff = fmt.Errorf("pglock: queued waiting is off (see WithQueue): %w", errors.ErrUnsupported)

// Queue returns a ticket for key's queue of waiters, subscribed to the
// key's releases (see [WithQueue]); [lock.Acquire] uses it. On a Locker
// made without WithQueue it returns an error matching
// errors.ErrUnsupported, and Acquire waits unqueued.
func (l *Locker) Queue(ctx context.Context, key string) (lock.Ticket, error) {
	if err := l.gate.CheckKey(ctx, "queue", key); err != nil {
		return nil, err
	}
	if !l.cfg.queued {
		return nil, errQueueOff
	}
	id := int64(rand.Uint64() >> 1) // non-negative, random: no two waiters share one
	sub, err := l.subscribe(ctx, key, strconv.FormatInt(id, 10))
	if err != nil {
		return nil, err
	}
	return &ticket{l: l, key: key, bkey: []byte(key), id: id, sub: sub}, nil
}

// ticket is one waiter's lock.Ticket.
type ticket struct {
	l      *Locker
	key    string
	bkey   []byte
	id     int64
	sub    *subscription
	queued bool // a take ran that may have put the ticket in the queue (and a release may have handed it the key)
	lost   bool // a take since it last left had an unknown outcome
	closed bool

	// The send time and TTL of the last take whose reply came back
	// refusing the key (zero after a take that failed): a row handed to
	// the ticket expires that TTL after a server time later than sent.
	sent time.Time
	ttl  time.Duration
	// The sequence's last token at that take: a notification of a token
	// no greater is of a hand-off before it, whose row that take found
	// gone (it would have taken a live one), delivered late.
	floor int64
}

// Wait blocks until a release names this ticket (or any release of an
// unqueued Locker), or ctx ends. See [subscription.Wait].
func (t *ticket) Wait(ctx context.Context, held *lock.NotAcquiredError) error {
	return t.sub.Wait(ctx, held)
}

// TryAcquire returns the lease a release handed to the ticket, without a
// request (or after a refresh when little of it is left); otherwise it is
// one queued take, in one round trip (two after a take of unknown
// outcome, after which it first leaves the queue).
func (t *ticket) TryAcquire(ctx context.Context, ttl time.Duration) (lock.Lease, error) {
	l := t.l
	if err := l.gate.CheckTicket(ctx, t.key, ttl, t.closed); err != nil {
		return nil, err
	}
	if le, err := t.handed(ctx, ttl); le != nil || err != nil {
		return le, err
	}
	if t.lost {
		// A retry after a take of unknown outcome, which may hold the key
		// with a lease nobody has while the waiters behind, whose waits
		// are bounded by the previous holder's TTL, sleep through its end.
		// Leave as Close does (giving back a row a release handed to the
		// ticket, waking the next waiter, which learns that take's
		// remaining TTL); the take below queues the ticket again, at the
		// back.
		if err := t.leave(ctx); err != nil {
			return nil, errs.OpErrorCtx(ctx, "leave the queue of", t.key, err)
		}
		t.lost = false
	}
	var (
		took  bool
		token int64
		left  int64
		floor int64
	)
	sent := time.Now()
	t.queued = true
	t.sent = time.Time{}
	err := l.locked(ctx, t.key, l.sql.ticketTake, []any{t.bkey, micros(ttl), t.id, micros(queueGrace)}, &took, &token, &left, &floor)
	if err != nil {
		t.lost = true // Close wakes the next waiter: this take may hold the key
		return nil, errs.OpErrorCtx(ctx, "take", t.key, err)
	}
	if !took {
		t.sent, t.ttl, t.floor = sent, ttl, floor
		return nil, &lock.NotAcquiredError{Key: t.key, Remaining: microDuration(left), Version: uint64(token)}
	}
	t.queued = false // the statement took it out of the queue
	t.sub.handed()   // a notification of the same row, if any, is used up
	// A row handed to the ticket has less than ttl left.
	return driver.LeaseOf(newLease(l, t.key, token, sent, min(microDuration(left), ttl))), nil
}

// handed returns the lease of a row that a release handed to the ticket,
// as its notification told: it expires the TTL of the ticket's last take
// after that take was sent. Nil, nil when there is none, or when the
// notification is older than that take (see ticket.floor), or when the
// ticket cannot tell its deadline (its last take failed) or the refresh
// of a short one found it gone: the ticket's take then finds out.
func (t *ticket) handed(ctx context.Context, ttl time.Duration) (lock.Lease, error) {
	token, ok := t.sub.handed()
	if !ok || t.sent.IsZero() || token <= t.floor {
		return nil, nil
	}
	le := newLease(t.l, t.key, token, t.sent, t.ttl)
	if time.Until(le.Deadline()) < ttl/handOffRefresh {
		if err := le.Refresh(ctx, ttl); errors.Is(err, lock.ErrNotHeld) {
			return nil, nil
		} else if err != nil {
			return nil, err // Close gives the row back
		}
	}
	t.queued = false // the release took the ticket out of the queue
	return driver.LeaseOf(le), nil
}

// Close leaves the queue, in one round trip when the ticket was queued,
// giving back a key a release handed to it, waking the next waiter if
// this one was the head (or gave a key back) and the key is free, and ends
// the subscription. If one of the ticket's takes failed with an unknown
// outcome (lock.Acquire then returns its error and closes the ticket),
// Close wakes the next waiter whether or not the key is free, so that it
// learns how long that take may hold the key (a retry, TryAcquire, does
// so first too). If the request fails, the ticket's entry expires on its
// own (queueGrace after the time it promised to come back), and a key
// handed to it with its lease.
// It is safe to call more than once.
func (t *ticket) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	var err error
	if t.queued {
		ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
		err = t.leave(ctx)
		cancel()
		if err != nil {
			err = errs.OpError("leave the queue of", t.key, err)
		}
	}
	_ = t.sub.Close()
	return err
}

// leave runs the leave statement after takeLockSQL, as [Locker.locked]
// does, but unprepared: a waiter gives up rarely, so most connections
// would prepare it (a round trip more) only to run it once, and Close runs
// after Acquire's context ended, where every round trip is a delay.
func (t *ticket) leave(ctx context.Context) error {
	l := t.l
	text := func(v int64) []byte { return strconv.AppendInt(nil, v, 10) }
	return l.run(ctx, func() error {
		c, err := l.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer c.Release()
		b := &pgconn.Batch{}
		b.ExecParams(takeLockSQL, [][]byte{text(int64(l.class)), text(int64(int32(hash64(t.key))))}, nil, nil, nil)
		b.ExecParams(l.sql.leave, [][]byte{t.bkey, text(t.id), []byte(l.channel), []byte(payload(hash64(t.key))), []byte(strconv.FormatBool(t.lost))},
			nil, []int16{1, 0, 0, 0, 0}, nil) // the key in binary: bytea's binary form is its bytes
		_, err = c.Conn().PgConn().ExecBatch(ctx, b).ReadAll()
		return err
	})
}

// splitPayload splits a notification's payload into the key's hash, the
// id of the waiter it wakes ("" for every waiter) and the token of the row
// a release handed to that waiter ("" for none).
func splitPayload(p string) (hash, id, token string) {
	hash, rest, _ := strings.Cut(p, ":")
	id, token, _ = strings.Cut(rest, ":")
	return hash, id, token
}
