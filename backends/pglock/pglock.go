package pglock

import (
	"context"
	"errors"
	"hash/fnv"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults of the options.
const (
	// DefaultTable is the name of the table that keeps the leases.
	DefaultTable = "idemlock_leases"
	// DefaultCleanupInterval is how often a Locker deletes expired rows.
	DefaultCleanupInterval = time.Minute
	// DefaultMaxRecordSize is the largest record Complete stores.
	DefaultMaxRecordSize = 64 << 20
)

// errs makes the package's errors.
const errs = driver.Name("pglock")

var (
	// ErrClosed is matched by the error of a Locker's methods that start
	// new work after Close. Leases taken before Close keep working while
	// the pool is open.
	//
	// Deprecated: it is [lock.ErrClosed]; use that.
	ErrClosed = lock.ErrClosed
	// ErrRecordTooLarge is matched by the error of Complete and CompleteTx
	// for a record above the Locker's limit (see [WithMaxRecordSize]); the
	// lease is left as it was.
	//
	// Deprecated: it is [lock.ErrRecordTooLarge], which every backend's
	// error matches; use that.
	ErrRecordTooLarge = lock.ErrRecordTooLarge
)

// Option configures a Locker made by [New]; New reports a bad one.
type Option func(*config) error

type config struct {
	schema    string // "" means the search_path decides
	table     string
	cleanup   time.Duration // 0: no cleaner
	maxRecord int
	ownPool   bool // set by the URL opener only: Close closes the pool
	queued    bool // WithQueue
}

// identifier is what WithTable and WithSchema accept: plain SQL names, so
// that they need no quoting rules beyond double quotes.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,49}$`)

// WithTable sets the name of the lease table (default [DefaultTable]). Its
// fencing sequence is <table>_token, its expiry index <table>_expires, and
// the table of queued waiters ([WithQueue]) <table>_waiters.
// Names are 1 to 50 letters, digits and underscores, not starting with a
// digit; they are used as written (case included).
func WithTable(name string) Option {
	return func(c *config) error {
		if !identifier.MatchString(name) {
			return errs.InvalidArgument("table name %q is not 1-50 letters, digits and underscores", name)
		}
		c.table = name
		return nil
	}
}

// WithSchema puts the lease table in schema, which [Locker.Migrate] creates
// if it is missing. By default the table name is unqualified, so the
// connection's search_path decides (usually public).
func WithSchema(name string) Option {
	return func(c *config) error {
		if !identifier.MatchString(name) {
			return errs.InvalidArgument("schema name %q is not 1-50 letters, digits and underscores", name)
		}
		c.schema = name
		return nil
	}
}

// WithCleanupInterval sets how often the Locker deletes expired rows, in one
// background goroutine (default [DefaultCleanupInterval]; zero turns it
// off, for example when one process or a cron job calls
// [Locker.Cleanup]). Expired rows never block a take; deleting them only
// keeps the table small.
func WithCleanupInterval(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return errs.InvalidArgument("cleanup interval %v is negative", d)
		}
		c.cleanup = d
		return nil
	}
}

// WithMaxRecordSize sets the largest record Complete and CompleteTx accept,
// in bytes (default [DefaultMaxRecordSize]; PostgreSQL itself stops at
// 1 GiB per value).
func WithMaxRecordSize(n int) Option {
	return func(c *config) error {
		if n <= 0 || n > 1<<30-1 {
			return errs.InvalidArgument("max record size %d outside [1, 1 GiB)", n)
		}
		c.maxRecord = n
		return nil
	}
}

// Locker takes leases kept in a PostgreSQL table. It is safe for concurrent
// use. Make one with [New] (or [lock.Open]) and Close it when done.
type Locker struct {
	gate    driver.Gate
	pool    *pgxpool.Pool
	cfg     config
	sql     statements
	class   int32  // the advisory-lock class of the table's takes
	channel string // the NOTIFY channel of the table's releases

	migrateMu sync.Mutex
	notify    notifier

	bg   context.Context // cancelled by Close: background work
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// New returns a Locker that keeps its leases in a table of the database pool
// connects to, creating the table on first use if it is missing (or call
// [Locker.Migrate]). The Locker never closes pool; Close the Locker (which
// stops its listening connection and its cleaner) before the pool.
//
// Invalid arguments (a nil pool, a bad option) are reported here, once, by
// an error matching lock.ErrInvalidArgument, never by a panic.
func New(pool *pgxpool.Pool, opts ...Option) (*Locker, error) {
	cfg := config{table: DefaultTable, cleanup: DefaultCleanupInterval, maxRecord: DefaultMaxRecordSize}
	if pool == nil {
		return nil, errs.InvalidArgument("nil pool")
	}
	if err := driver.Apply(&cfg, opts); err != nil {
		return nil, err
	}
	l := &Locker{gate: driver.Gate{Name: errs}, pool: pool, cfg: cfg}
	l.bg, l.stop = context.WithCancel(context.Background())
	l.notify.l = l
	qualified := cfg.table
	if cfg.schema != "" {
		qualified = cfg.schema + "." + cfg.table
	}
	l.sql = newStatements(cfg.schema, cfg.table)
	l.class = int32(hash64(qualified))
	l.channel = qualified
	if len(l.channel) > 63 { // NAMEDATALEN - 1
		l.channel = "idemlock_" + strconv.FormatUint(hash64(qualified), 16)
	}
	if cfg.cleanup > 0 {
		l.wg.Add(1)
		go l.cleanLoop()
	}
	return l, nil
}

// Close stops the Locker's background work (its listening connection and
// its cleaner) and wakes its subscriptions, which then report
// [lock.ErrClosed].
// Leases that are held stay held until released or expired. Close never
// closes a pool passed to New; a Locker made by lock.Open closes its pool
// too. Safe to call more than once.
func (l *Locker) Close() error {
	return l.gate.Close(func() error {
		l.stop()
		l.notify.close()
		l.wg.Wait()
		if l.cfg.ownPool {
			l.pool.Close()
		}
		return nil
	})
}

// Migrate creates what the Locker needs, if it is missing: the schema (when
// [WithSchema] named one), the lease table, its fencing sequence, its
// expiry index and the table of queued waiters ([WithQueue]), in one
// transaction serialised with other Migrates of the
// same table by an advisory lock. It is safe to run again and from many
// processes at once. Lockers run it by themselves when a statement finds
// the table missing; call it yourself to create the table ahead of time
// (with a role that may), or take the statements from [Locker.Schema].
func (l *Locker) Migrate(ctx context.Context) error {
	if err := l.gate.CheckContext(ctx, "migrate"); err != nil {
		return err
	}
	l.migrateMu.Lock()
	defer l.migrateMu.Unlock()
	tx, err := l.pool.Begin(ctx)
	if err != nil {
		return errs.OpErrorCtx(ctx, "migrate", "", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1::int4, 0)", l.class); err != nil {
		return errs.OpErrorCtx(ctx, "migrate", "", err)
	}
	for _, stmt := range l.sql.migrate {
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return errs.OpErrorCtx(ctx, "migrate", "", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return errs.OpErrorCtx(ctx, "migrate", "", err)
	}
	return nil
}

// Schema returns the statements [Locker.Migrate] runs, for a migration tool
// of your own.
func (l *Locker) Schema() []string { return append([]string(nil), l.sql.migrate...) }

// addedColumn matches the columns added to tables after they were first
// made: a statement that finds one missing runs Migrate.
var addedColumn = regexp.MustCompile(`\b(fingerprint|handed_to|took_at|ttl)\b`)

// missingTable reports whether err says that the table, its sequence, its
// schema or a column added since does not exist, which Migrate fixes.
func missingTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000" ||
		pgErr.Code == "42703" && addedColumn.MatchString(pgErr.Message)) // a table from before the column
}

// run runs one statement, op, and runs it once more if it failed before it
// could have been applied: when the table is missing (after creating it),
// when pgx did not send it, or when the server had terminated the session
// (SQLSTATE class 57: an administrator, a restart). A reply lost after the
// statement was sent is never retried: its outcome is unknown, and the
// caller gets the error.
func (l *Locker) run(ctx context.Context, op func() error) error {
	err := op()
	switch {
	case err == nil || ctx.Err() != nil:
		return err
	case missingTable(err):
		if err := l.Migrate(ctx); err != nil {
			return err
		}
	case !pgconn.SafeToRetry(err) && !terminated(err):
		return err
	}
	return op()
}

// terminated reports whether err is the server ending the session
// (admin_shutdown, crash_shutdown, cannot_connect_now, ...).
func terminated(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "57")
}

// TryAcquire takes key for ttl if it is free, in one statement and one
// round trip. When the key is held it returns a *lock.NotAcquiredError with
// the holder's remaining TTL and fencing token (as Version).
func (l *Locker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if err := l.gate.Check(ctx, "take", key, ttl); err != nil {
		return nil, err
	}
	le, t, err := l.take(ctx, key, ttl, nil)
	if err == nil && le == nil { // a completed idempotency record holds the key
		err = &lock.NotAcquiredError{Key: key, Remaining: t.remaining}
	}
	return driver.LeaseOf(le), err
}

// taken is what a take found when it did not take the key: a completed
// record, kept for remaining, or a live holder's fingerprint.
type taken struct {
	record    []byte
	remaining time.Duration
	holder    []byte
}

// take runs the take statement: one round trip that takes key (storing fp
// with the lease), or marks its live holder as waited for (and returns its
// fingerprint), or finds its completed record.
func (l *Locker) take(ctx context.Context, key string, ttl time.Duration, fp []byte) (*lease, taken, error) {
	var (
		token     int64
		waiters   bool
		record    []byte
		remaining int64
		holder    []byte
	)
	sent := time.Now()
	err := l.run(ctx, func() error {
		return l.pool.QueryRow(ctx, l.sql.take, l.class, int32(hash64(key)), []byte(key), micros(ttl), fp).Scan(&token, &waiters, &record, &remaining, &holder)
	})
	if err != nil {
		return nil, taken{}, errs.OpErrorCtx(ctx, "take", key, err)
	}
	switch {
	case record != nil:
		return nil, taken{record: record, remaining: microDuration(remaining)}, nil
	case waiters:
		return nil, taken{holder: holder}, &lock.NotAcquiredError{Key: key, Remaining: microDuration(remaining), Version: uint64(token)}
	}
	return newLease(l, key, token, sent, ttl), taken{}, nil
}

// micros converts d to whole microseconds, rounding up.
func micros(d time.Duration) int64 { return driver.Ceil(d, time.Microsecond) }

// microDuration converts microseconds back to a Duration (0 for none).
func microDuration(us int64) time.Duration { return driver.Units(us, time.Microsecond) }

// hash64 is FNV-1a: the key's advisory-lock id (folded to 32 bits) and its
// NOTIFY payload. Collisions only serialise two takes or wake a waiter for
// nothing.
func hash64(s string) uint64 {
	f := fnv.New64a()
	_, _ = f.Write([]byte(s))
	return f.Sum64()
}
