package pglock

import (
	"fmt"

	"github.com/jackc/pgx/v5"
)

// errNoRows is what QueryRow's Scan returns for a statement that matched no
// row.
var errNoRows = pgx.ErrNoRows

// takeOver is the ON CONFLICT (key) DO UPDATE of a take of the row l
// (the ordinary take, and a ticket's): the proposed row replaces l if l
// expired; otherwise l stays, marked as waited for unless it holds a
// record.
const takeOver = `
	token       = CASE WHEN l.expires_at <= now() THEN excluded.token ELSE l.token END,
	expires_at  = CASE WHEN l.expires_at <= now() THEN excluded.expires_at ELSE l.expires_at END,
	record      = CASE WHEN l.expires_at <= now() THEN NULL ELSE l.record END,
	fingerprint = CASE WHEN l.expires_at <= now() THEN excluded.fingerprint ELSE l.fingerprint END,
	waiters     = CASE WHEN l.expires_at <= now() THEN excluded.waiters ELSE l.waiters OR l.record IS NULL END,
	handed_to   = CASE WHEN l.expires_at <= now() THEN excluded.handed_to ELSE l.handed_to END`

// statements are the SQL texts of one table, built once by New.
type statements struct {
	migrate                      []string
	take, refresh, release       string
	complete, completeTx, delete string
	inspect, forceRelease        string
	deleteRecord                 string

	// Queued waiting (WithQueue, queue.go). Each runs after
	// takeLockSQL in the same implicit transaction.
	ticketTake, releaseQueued, leave, deleteWaiters string
}

// Columns of the lease table, one row per key:
//
//	key         bytea        the caller's key, byte for byte (NUL included)
//	token       bigint       the holder's fencing token, from the sequence
//	expires_at  timestamptz  the server time the lease or record ends
//	waiters     boolean      a failed take saw this holder: wake on release
//	record      bytea        NULL while held; the completed record after
//	fingerprint bytea        the holder's fingerprint (ClaimFingerprint), or NULL
//	handed_to   bigint       the id of the queued waiter a release handed the row to,
//	                         or whose ticket's take made it (so that its leave can
//	                         undo a take whose reply was lost), XOR token (a
//	                         takeover that knows no handed_to, by
//	                         an older version, changes the token and so unnames
//	                         the waiter), or NULL
func newStatements(schema, table string) statements {
	qual := func(name string) string {
		if schema == "" {
			return pgx.Identifier{name}.Sanitize()
		}
		return pgx.Identifier{schema, name}.Sanitize()
	}
	t, seq, w := qual(table), qual(table+"_token"), qual(table+"_waiters")
	var s statements
	if schema != "" {
		s.migrate = append(s.migrate, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{schema}.Sanitize())
	}
	s.migrate = append(s.migrate,
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
	key        bytea       PRIMARY KEY,
	token      bigint      NOT NULL,
	expires_at timestamptz NOT NULL,
	waiters    boolean     NOT NULL DEFAULT false,
	record     bytea
)`, t),
		// CACHE 1 (the default) keeps nextval in real-time order across
		// sessions; NO CYCLE keeps it increasing.
		// Added after the first release: tables made before get it here.
		fmt.Sprintf("ALTER TABLE %s ADD COLUMN IF NOT EXISTS fingerprint bytea", t),
		// Added with WithQueue's direct hand-off (queue.go).
		fmt.Sprintf("ALTER TABLE %s ADD COLUMN IF NOT EXISTS handed_to bigint", t),
		fmt.Sprintf("CREATE SEQUENCE IF NOT EXISTS %s AS bigint CACHE 1 NO CYCLE", seq),
		fmt.Sprintf("CREATE INDEX IF NOT EXISTS %s ON %s (expires_at)", pgx.Identifier{table + "_expires"}.Sanitize(), t),
		// Added with WithQueue: the queued waiters (queue.go). Tables made
		// before get it here, when a queued statement finds it missing.
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
	key        bytea       NOT NULL,
	id         bigint      NOT NULL,
	arrived    timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	took_at    timestamptz,
	ttl        bigint,
	PRIMARY KEY (key, id)
)`, w),
		// Waiters tables made before the direct hand-off (by an unreleased
		// version) get its columns here; a NULL took_at is never handed to.
		fmt.Sprintf("ALTER TABLE %s ADD COLUMN IF NOT EXISTS took_at timestamptz, ADD COLUMN IF NOT EXISTS ttl bigint", w),
		fmt.Sprintf("CREATE INDEX IF NOT EXISTS %s ON %s (key, arrived, id)", pgx.Identifier{table + "_waiters_q"}.Sanitize(), w),
	)
	s.queueStatements(t, seq, w)

	// The take. The advisory lock (transaction-scoped, held until this
	// statement's implicit commit) serialises takes of one key, so the token
	// drawn under it is greater than the token of every take of the key
	// that committed before: without it a take that drew its token, stalled,
	// and inserted after another take and release of the key would hold a
	// smaller token than the lease before it. The row is inserted, or taken
	// over if it expired, or marked as waited for if it is held; a completed
	// record is returned as it is. The taker's fingerprint is stored with
	// the lease, and a held row returns its holder's. $1,$2 advisory lock,
	// $3 key, $4 TTL µs, $5 fingerprint (NULL for none).
	s.take = fmt.Sprintf(`WITH g AS MATERIALIZED (SELECT pg_advisory_xact_lock($1::int4, $2::int4))
INSERT INTO %[1]s AS l (key, token, expires_at, fingerprint)
SELECT $3::bytea, nextval('%[2]s'), now() + $4::bigint * interval '1 microsecond', $5::bytea FROM g
ON CONFLICT (key) DO UPDATE SET `+takeOver+`
RETURNING token, waiters, record, (extract(epoch FROM expires_at - now()) * 1000000)::bigint, fingerprint`, t, seq)

	// $1 key, $2 token, $3 TTL µs.
	s.refresh = fmt.Sprintf(`UPDATE %s SET expires_at = now() + $3::bigint * interval '1 microsecond'
WHERE key = $1 AND token = $2 AND record IS NULL AND expires_at > now()`, t)

	// $1 key, $2 token, $3 channel, $4 payload. One row if the lease's row
	// was there (live says whether it had not expired), none otherwise.
	s.release = fmt.Sprintf(`WITH d AS (DELETE FROM %s WHERE key = $1 AND token = $2 AND record IS NULL
	RETURNING expires_at > now() AS live, waiters),
n AS (SELECT pg_notify($3, $4) FROM d WHERE d.waiters)
SELECT live, (SELECT count(*) FROM n) FROM d`, t)

	// $1 key, $2 token, $3 record, $4 retention µs, $5 channel, $6 payload.
	// Returns whether it stored the record, and whether an earlier statement
	// of this lease did (a retry after a lost reply).
	completeSQL := func(now string, retried string) string {
		return fmt.Sprintf(`WITH c AS (UPDATE %[1]s SET record = $3, expires_at = %[2]s + $4::bigint * interval '1 microsecond'
	WHERE key = $1 AND token = $2 AND record IS NULL AND expires_at > %[2]s
	RETURNING waiters),
n AS (SELECT pg_notify($5, $6) FROM c WHERE c.waiters)
SELECT (SELECT count(*) FROM c) = 1, (SELECT count(*) FROM n), %[3]s`, t, now, retried)
	}
	s.complete = completeSQL("now()",
		fmt.Sprintf("EXISTS (SELECT FROM %s WHERE key = $1 AND token = $2 AND record IS NOT NULL)", t))
	// Inside the caller's transaction now() is when the transaction began:
	// the clock must be read when the statement runs. An earlier completion
	// never counts as success there (its transaction committed a business
	// write already).
	s.completeTx = completeSQL("clock_timestamp()", "false")

	// Admin. $1 key. A live row only: an expired one is free.
	s.inspect = fmt.Sprintf(`SELECT token, record IS NOT NULL, coalesce(length(record), 0),
	(extract(epoch FROM expires_at - now()) * 1000000)::bigint
FROM %s WHERE key = $1 AND expires_at > now()`, t)
	// $1 key, $2 channel, $3 payload. One row if a live lease was deleted.
	s.forceRelease = fmt.Sprintf(`WITH d AS (DELETE FROM %s WHERE key = $1 AND record IS NULL AND expires_at > now()
	RETURNING waiters),
n AS (SELECT pg_notify($2, $3) FROM d WHERE d.waiters)
SELECT (SELECT count(*) FROM n) FROM d`, t)
	// $1 key.
	s.deleteRecord = fmt.Sprintf(`DELETE FROM %s WHERE key = $1 AND record IS NOT NULL AND expires_at > now()`, t)

	// $1 batch size. Rows a take or a completion has locked are skipped.
	s.delete = fmt.Sprintf(`DELETE FROM %[1]s WHERE key IN (
	SELECT key FROM %[1]s WHERE expires_at < now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)`, t)
	return s
}
