// Package pglock is idemlock's PostgreSQL backend, on pgx v5: leases are
// rows of one table, fencing tokens come from a sequence, waiters are woken
// by LISTEN/NOTIFY, and an idempotency record can be committed in the
// caller's own transaction together with the business write it records.
// It is a module of its own (github.com/idemlock/lock/backends/pglock), so
// pgx enters only the programs that use it.
//
//	pool, err := pgxpool.New(ctx, "postgres://app@127.0.0.1:5432/app")
//	...
//	locker, err := pglock.New(pool)
//	...
//	defer locker.Close() // before pool.Close(); the Locker never closes pool
//	err = lock.Do(ctx, locker, "invoice/42", func(ctx context.Context, lease lock.Lease) error { ... })
//
// # How a lock works
//
// A lock is the row of its key in the table idemlock_leases (see
// [WithTable], [WithSchema]), created with its sequence and expiry index on
// first use or by [Locker.Migrate]:
//
//	key bytea PRIMARY KEY, token bigint, expires_at timestamptz,
//	waiters boolean, record bytea, fingerprint bytea
//
// (fingerprint was added later: Migrate adds it to an older table, and so
// does the first statement that finds it missing). The role the pool
// connects as needs SELECT, INSERT, UPDATE and DELETE on the table (and on
// the waiters table, with [WithQueue]) and USAGE on the sequence (nextval,
// and with WithQueue pg_sequence_last_value, which UPDATE alone does not
// allow); Migrate needs CREATE as well.
//
// Keys are stored as bytea, byte for byte: every key the contract allows
// (any UTF-8 up to lock.MaxKeyLen bytes, NUL included, which a text column
// cannot hold) is its own row, with no escaping or hashing.
//
//   - Take is one statement: INSERT … ON CONFLICT (key) DO UPDATE, which
//     inserts the row, or takes it over if it expired, or else marks it as
//     waited for and returns the holder's token and remaining TTL (a
//     *lock.NotAcquiredError). Expired rows never block a take.
//   - Refresh is one UPDATE guarded by the lease's token and by expires_at
//     being in the future; Release is one DELETE guarded by the token. A
//     stale lease's refresh or release matches no row and reports
//     lock.ErrNotHeld; it never touches a newer holder's row.
//   - An uncontended take plus release is two round trips, a refresh one,
//     a Claim plus Complete two, a replayed Claim one (once pgx has
//     prepared each statement on a connection; pgxpool's default is to
//     prepare and cache). Each is its own transaction and commits a write.
//   - A statement that cannot have run (pgx did not send it, or the server
//     had ended the session: a restart, pg_terminate_backend) is retried
//     once. A statement whose reply was lost is not: the error is returned
//     and matches neither lock.ErrNotHeld nor lock.ErrNotAcquired. A take
//     whose reply was lost leaves the key held, by no lease, until its TTL;
//     a retried Release then reports lock.ErrNotHeld; a retried Complete
//     reports success if the first one stored the record.
//
// # TTLs
//
// TTLs are counted by the server's clock: a lease ends at the statement's
// now() plus its TTL, in whole microseconds (rounded up). Clients' clocks
// never enter. [lock.Deadliner] reports the local time the take or refresh
// was sent plus the TTL, a lower bound of the server's expiry.
//
// # Fencing tokens
//
// [lock.Lease.Token] is drawn with nextval from the table's sequence
// <table>_token (CACHE 1, NO CYCLE), so tokens increase across keys,
// holders, expiries and restarts. A take draws its token while holding a
// transaction-scoped advisory lock on the key (pg_advisory_xact_lock with
// two int4 keys: a hash of the table's name and a hash of the key), which
// every take of the key holds until it commits: without it, a take that
// drew its token, stalled, and wrote its row after another take and
// release of the same key would hold a smaller token than the lease before
// it. The lock is held for the take statement alone; applications that use
// the two-int4 advisory-lock space can meet it only by a hash collision,
// which makes two takes wait for each other for a moment.
//
// Crashes keep tokens increasing because of how sequences are logged:
// nextval writes a WAL record that reserves 32 values ahead, and a token is
// handed out only by a take that committed, whose commit record follows
// that WAL record and is flushed before the commit returns. After a crash,
// recovery replays the sequence to the reserved value, past every token a
// client saw (values drawn by takes that never committed may be drawn
// again; no lease had them). This holds with synchronous_commit on (the
// default) and fsync on; with either off, or after a failover to a standby
// that had not received the latest WAL, a crash can lose recent takes and
// draw their tokens again. A rollback never returns a value to a sequence.
//
// # Waiting
//
// *Locker implements [lock.Notifier], which lock.Acquire uses. Each Locker
// has at most one listening connection (taken from its pool on the first
// Subscribe and kept until Close), run by github.com/jackc/pgxlisten and
// listening on one channel per table (the table's qualified name). A take
// that finds the key held marks the row as waited for; a release or
// completion of a marked row sends pg_notify(channel, hash of the key), and
// the Locker wakes the subscriptions of that key (see also "Queued
// waiting" below). Subscribe returns once
// the connection listens, so no release after it goes unreported; a new
// connection wakes every subscription, which covers anything released
// while it was down, and while it is down Wait returns an error, so
// lock.Acquire polls instead. Expiry sends nothing: a waiter never sleeps
// past the holder's remaining TTL, which the failed take reported.
//
// Releases that nobody waited for send no NOTIFY, because a transaction
// that notifies takes a database-wide lock at commit and holds it while
// its commit record is flushed, which serialises the commits of every
// notifying transaction on the server. Measured on this repository's test
// machine (PostgreSQL 15, fsync on, 32 concurrent autocommit inserts): 1,400
// to 2,500 commits/s without NOTIFY, 420 to 450 with one per commit. Every
// waiter wakes on a release and makes one attempt, so N waiters cost N
// statements per hand-off, unless they queue (below).
//
// # Queued waiting
//
// With [WithQueue] the Locker also implements [lock.Queuer]: lock.Acquire
// waits in a first-come-first-served queue per key, and a release hands
// the key straight to the waiter at its head and wakes it alone, so a
// hand-off costs about two requests (the release, the next arrival's
// queued take) whatever the number of waiters; unqueued, each release
// costs one take per waiter. Waiters are rows of a second table,
// <table>_waiters (key, id, arrived, expires_at, took_at, ttl), made by
// Migrate beside the lease table (and by the first queued statement that
// finds it missing, so tables made before keep working); arrival, expiry
// and the time of a waiter's last take are the server's clock_timestamp().
//
//   - A ticket's take is one statement with the ordinary take in it (same
//     token, expiry and takeover): it takes the key only when it is free
//     and no live waiter is ahead of the ticket, and otherwise queues the
//     ticket (a waiter keeps its place) with an expiry of the holder's
//     remaining TTL (or, when the key is free and a waiter is ahead, the
//     head's expiry) plus a grace of 2 s: the time it promised to come
//     back, since lock.Acquire never waits past the remaining TTL it was
//     told. A waiter whose process dies therefore leaves the queue at most
//     the holder's TTL plus 2 s after its last attempt.
//   - A queued Locker's release hands the key to the live head: a new row
//     with a new token (drawn under the key's advisory lock, so tokens
//     still increase), expiring the head's TTL after the head's last take
//     (as if that take had succeeded), marked as handed to the head, whose
//     entry it deletes. It notifies "<hash of key>:<id of the head>:<token>",
//     and the notifiers wake that ticket alone (and every unqueued
//     subscription of the key); the ticket returns the lease without a
//     request, with a Deadline of its last take's send time plus its TTL
//     (refreshed first if less than a quarter of the TTL is left). When the
//     head's last take leaves half its TTL or less, the release only
//     notifies "<hash of key>:<id of the head>" and the head takes the key.
//     A ticket that missed its notification gets the handed row from its
//     next take. A notification that comes after the ticket's next take was
//     refused (a slow listening connection; the handed row expired or was
//     force-released meanwhile) is ignored: its token is no greater than
//     the sequence's last value that take read. The row names the head by
//     its id XOR the token, so that a takeover by an older version (whose
//     take leaves the column as it is) names nobody.
//   - A ticket that gives up (its context ends) deletes its row and gives
//     back a row handed to it; if it was the head or gave a row back, and
//     the key is free, it notifies the next head, so a head that leaves
//     never strands the queue. If that request fails, its row expires as a
//     dead waiter's does, and a handed row as a dead holder's: a head that
//     dies after a release handed it the key holds it until the TTL of its
//     last take runs out.
//   - The take, the queued release and the leave each run after SELECT
//     pg_advisory_xact_lock on the key (the take's lock), pipelined with
//     one Sync: one round trip and one implicit transaction. The lock must
//     come before the statement because a READ COMMITTED statement reads
//     with the snapshot taken when it starts; taken after the lock, it sees
//     every waiter that a take of the key queued before, so a release
//     never misses one that queued while it waited for the row.
//
// The price is paid by contended keys: a queued take writes a waiter row,
// a queued release reads the queue and notifies while a waiter is queued,
// and an Acquire that must wait listens before its first queued attempt.
// Lockers with and without WithQueue may share a table and keys: a release
// by an unqueued Locker notifies every waiter (queued ones included, each
// of which then tries, and the head's take succeeds), and unqueued waiters
// wake on every release. TryAcquire and Claim never look at the queue:
// they may take a free key between two hand-offs, and the head then finds
// it held and keeps its place. Complete wakes every waiter, queued or not
// (they find the record).
//
// # Idempotency records
//
// The Locker is also an idempotency.Store. [Locker.Claim] is the take's
// statement, which also returns a completed record; [Locker.Complete]
// stores the record in the key's row, kept for its retention by the
// server's clock, in one UPDATE guarded by the token. Records are limited
// to [DefaultMaxRecordSize] (see [WithMaxRecordSize]).
//
// [Locker.CompleteTx] does the same inside the caller's pgx.Tx, so that
// the record commits or rolls back with the business writes of that
// transaction: a crash can never separate "charged" from "recorded". See
// the CompleteTx example (an orders handler) and crash_test.go, which kills
// the handling process between the business write and the response and
// shows that the retry neither charges twice nor loses the order.
//
// # Health, limits and administration
//
// *Locker implements the contract's optional interfaces: [Locker.Ping]
// (pgxpool's Ping, for readiness probes: lock.Open does not connect, so it
// succeeds for a server that is down), [Locker.TTLLimits] (whole
// microseconds, no minimum or maximum), lock.Admin ([Locker.Inspect],
// [Locker.ForceRelease], [Locker.DeleteRecord], taking the caller's key)
// and idempotency.FingerprintClaimer ([Locker.ClaimFingerprint]: the
// fingerprint is a column of the key's row, written by the take
// statement). PostgreSQL notifies only waiters, so a lease learns that its
// row was deleted (by hand, or by ForceRelease) from its next Refresh:
// under lock.KeepAlive with the default interval, at most a third of the
// TTL plus one round trip later.
//
// # Expired rows
//
// Each Locker runs one cleaner goroutine (not one per lock) that deletes
// expired rows in batches every [DefaultCleanupInterval], skipping rows
// that statements have locked ([WithCleanupInterval]; [Locker.Cleanup]
// runs one pass). Expired rows never block a take, so the cleaner only
// keeps the table small.
//
// # Why not session advisory locks
//
// pg_try_advisory_lock is the lock most Go services write by hand on
// PostgreSQL, and it is cheaper: no row, no WAL, and the server queues
// waiters itself. On this repository's bench (bench/, PostgreSQL 15 with
// fsync off on a loaded 2-core machine) an uncontended take plus release
// took 0.44 ms with a session advisory lock against 0.97 ms for pglock,
// both two round trips, and a contended hand-off 0.33 ms against 1.0 ms
// (p50). pglock does not use them because a session advisory lock belongs
// to a connection: the connection must stay out of the pool for the whole
// hold (a hundred held locks are a hundred connections), and it is
// incompatible with transaction-mode poolers such as PgBouncer; it has no
// TTL, so a holder that hangs with its connection open holds the lock
// forever, and one whose connection drops loses it without being told; it
// has no fencing token; and its release must come from the same
// connection, so a lease cannot outlive or leave the connection that took
// it. pglock trades the extra write for leases that expire by the server's
// clock, tokens, and records in the caller's transaction. It uses advisory
// locks only for the duration of one take statement (above).
//
// # URLs
//
// Importing the package registers the "postgres" and "postgresql" schemes
// with lock.Open:
//
//	postgres://[user[:password]@]host[:port]/database[?param=value&...]
//
// The URL is pgx's (pgxpool.ParseConfig: sslmode, pool_max_conns, runtime
// parameters such as search_path, …) plus these options: idemlock_table,
// idemlock_schema, idemlock_cleanup_interval (a duration, 0 for none),
// idemlock_max_record_size (bytes), idemlock_queue (true for [WithQueue]). Errors match lock.ErrInvalidURL and
// never show the password. The Locker owns the pool Open made and closes
// it. Open makes no request; pgxpool keeps only the values of its context
// (not its cancellation) for the connections it opens in the background
// (pool_min_conns), so ending the context after Open returns changes
// nothing.
//
// # Caveats
//
//   - A cancelled context ends the call at once (pgx closes the connection)
//     but not the statement on the server: a take blocked behind a row
//     lock may still commit afterwards, leaving the key held by no lease
//     until its TTL. Configure pgx's cancel-request context watcher if the
//     server should abort such statements.
//   - Under a default_transaction_isolation of serializable, statements may
//     fail with serialization errors (not applied; retry them).
//   - A Claim waits while another process's CompleteTx of the key is in an
//     open transaction: keep CompleteTx the last statement before the
//     commit.
//   - LISTEN needs a session of its own. Behind a transaction-mode pooler
//     (PgBouncer's pool_mode = transaction) notifications are lost, and
//     waiters then wake only when the holder's TTL runs out: give the
//     Locker a pool that connects to the server directly, or a
//     session-mode pool.
//   - Takes write a row version even when they fail (to mark the row as
//     waited for, and to report the holder's TTL in the same round trip).
package pglock
