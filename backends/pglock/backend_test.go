package pglock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/pglock"
	"github.com/jackc/pgx/v5"
)

// TestRoundTrips checks the goal: once a connection has prepared the
// statements, a take plus release is two round trips, a refresh one, a
// claim plus complete two, and a replayed claim one.
func TestRoundTrips(t *testing.T) {
	l, w := newLockerOn(t, postgresURL(t), pglock.WithTable(testTable(t)))
	ctx := t.Context()
	const ttl = 10 * time.Second
	pair := func(key string) {
		le, err := l.TryAcquire(ctx, key, ttl)
		if err != nil {
			t.Fatal(err)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	before := w.RoundTrips()
	pair("cold") // creates the table, then prepares each statement once
	cold := w.RoundTrips() - before
	pair("warm-up")

	const rounds = 50
	before = w.RoundTrips()
	start := time.Now()
	for range rounds {
		pair("k")
	}
	took := time.Since(start)
	if got := float64(w.RoundTrips()-before) / rounds; got != 2 {
		t.Errorf("take+release made %.2f round trips per pair, want 2", got)
	}
	t.Logf("take+release: first %d round trips (table created, statements prepared), then 2 (%v per pair)", cold, took/rounds)

	le, err := l.TryAcquire(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	_ = le.Refresh(ctx, ttl) // prepares
	before = w.RoundTrips()
	if err := le.Refresh(ctx, ttl); err != nil {
		t.Fatal(err)
	}
	if n := w.RoundTrips() - before; n != 1 {
		t.Errorf("Refresh made %d round trips, want 1", n)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}

	claimComplete := func(key string) {
		le, rec, err := l.Claim(ctx, key, ttl)
		if err != nil || le == nil || rec != nil {
			t.Fatalf("Claim(%q) = %v, %q, %v", key, le, rec, err)
		}
		if err := l.Complete(ctx, le, []byte("response"), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	claimComplete("c0") // prepares
	before = w.RoundTrips()
	claimComplete("c1")
	if n := w.RoundTrips() - before; n != 2 {
		t.Errorf("Claim+Complete made %d round trips, want 2", n)
	}
	before = w.RoundTrips()
	if _, rec, err := l.Claim(ctx, "c1", ttl); err != nil || string(rec) != "response" {
		t.Fatalf("replaying Claim = %q, %v", rec, err)
	}
	if n := w.RoundTrips() - before; n != 1 {
		t.Errorf("a replaying Claim made %d round trips, want 1", n)
	}
}

// TestKeysStoredAsBytes checks that keys are stored byte for byte, NUL and
// all, so that no two keys share a row.
func TestKeysStoredAsBytes(t *testing.T) {
	table := testTable(t)
	l := newLocker(t, pglock.WithTable(table))
	pool := newPool(t, postgresURL(t), nil)
	ctx := t.Context()
	keys := []string{"a\x00b", "a", "a\x00c", "%00", "\\x00", "日本語 ", strings.Repeat("\x00", lock.MaxKeyLen), strings.Repeat("é", lock.MaxKeyLen/2)}
	for _, key := range keys {
		le, err := l.TryAcquire(ctx, key, time.Minute)
		if err != nil {
			t.Fatalf("TryAcquire(%q): %v", key, err)
		}
		var stored []byte
		if err := pool.QueryRow(ctx, fmt.Sprintf("SELECT key FROM %s WHERE token = $1", table), int64(le.Token())).Scan(&stored); err != nil {
			t.Fatalf("reading the row of token %d: %v", le.Token(), err)
		}
		if !bytes.Equal(stored, []byte(key)) {
			t.Errorf("key %.20q stored as %.20q", key, stored)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != len(keys) {
		t.Errorf("%d rows for %d different keys", n, len(keys))
	}
}

// TestTokenDrawnUnderKeyLock checks why tokens increase per key even when
// a take stalls between drawing its token and writing its row: a take
// draws its token only once it holds the key's advisory lock, which every
// take of the key holds until it commits. Here a transaction holds that
// lock as a concurrent take would, draws a token and commits; the blocked
// take must come out with a greater token. (Without the lock the take
// would have drawn its token first and come out with a smaller one.)
func TestTokenDrawnUnderKeyLock(t *testing.T) {
	table := testTable(t)
	l := newLocker(t, pglock.WithTable(table))
	pool := newPool(t, postgresURL(t), nil)
	ctx := t.Context()
	if err := l.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	const key = "k"
	class, id := pglock.TakeLockID(l, key)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1::int4, $2::int4)", class, id); err != nil {
		t.Fatal(err)
	}
	type result struct {
		le  lock.Lease
		err error
	}
	done := make(chan result, 1)
	go func() {
		le, err := l.TryAcquire(ctx, key, time.Minute)
		done <- result{le, err}
	}()
	// The server sends no event when a backend starts waiting: poll
	// pg_locks until the take waits for the advisory lock.
	waitFor(t, "the take waits for the key's advisory lock", 10*time.Second, func() bool {
		var waiting bool
		err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND classid = $1::int4::oid AND objid = $2::int4::oid)`, class, id).Scan(&waiting)
		return err == nil && waiting
	})
	var drawn int64
	if err := tx.QueryRow(ctx, fmt.Sprintf("SELECT nextval('%s_token')", table)).Scan(&drawn); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.le.Token() <= uint64(drawn) {
		t.Errorf("the take's token %d is not greater than %d, drawn before the take got the key's lock", r.le.Token(), drawn)
	}
}

// TestNotifyOnlyWhenWaited checks that a release notifies only when a
// failed take marked the row as waited for: an uncontended take plus
// release sends no NOTIFY (whose commit takes a database-wide lock), a
// contended one does.
func TestNotifyOnlyWhenWaited(t *testing.T) {
	table := testTable(t)
	url := postgresURL(t)
	l, other := newLocker(t, pglock.WithTable(table)), newLocker(t, pglock.WithTable(table))
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	channel := pglock.Channel(l)
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	// next returns the next notification's payload; notifications arrive in
	// commit order, so a sentinel sent after a release tells whether the
	// release notified.
	sentinel := func() {
		if _, err := newPool(t, url, nil).Exec(ctx, "SELECT pg_notify($1, 'sentinel')", channel); err != nil {
			t.Fatal(err)
		}
	}
	next := func() string {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			t.Fatal(err)
		}
		return n.Payload
	}

	le, err := l.TryAcquire(ctx, "quiet", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	sentinel()
	if p := next(); p != "sentinel" {
		t.Errorf("an uncontended release notified %q", p)
	}

	le, err = l.TryAcquire(ctx, "busy", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.TryAcquire(ctx, "busy", time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("take of a held key: %v", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	sentinel()
	if p, want := next(), pglock.Payload("busy"); p != want {
		t.Errorf("a release after a failed take notified %q first, want %q", p, want)
	}
}

// TestNotAcquiredReportsHolder checks what a failed take reports: the
// holder's token and its remaining TTL by the server's clock.
func TestNotAcquiredReportsHolder(t *testing.T) {
	l := newLocker(t)
	ctx := t.Context()
	key := "holder/" + testTable(t)
	le, err := l.TryAcquire(ctx, key, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer le.Release(context.WithoutCancel(ctx))
	_, err = l.TryAcquire(ctx, key, time.Minute)
	var held *lock.NotAcquiredError
	if !errors.As(err, &held) {
		t.Fatalf("take of a held key: %v, want a *lock.NotAcquiredError", err)
	}
	if held.Version != le.Token() {
		t.Errorf("Version = %d, want the holder's token %d", held.Version, le.Token())
	}
	if held.Remaining <= 20*time.Second || held.Remaining > 30*time.Second {
		t.Errorf("Remaining = %v, want just under 30s", held.Remaining)
	}
}

// TestCleanup checks that Cleanup deletes expired leases and records and
// keeps live ones, and that a table that does not exist yet is no error.
func TestCleanup(t *testing.T) {
	table := testTable(t)
	l := newLocker(t, pglock.WithTable(table), pglock.WithCleanupInterval(0))
	pool := newPool(t, postgresURL(t), nil)
	ctx := t.Context()
	if n, err := l.Cleanup(ctx); err != nil || n != 0 {
		t.Fatalf("Cleanup before the table exists = %d, %v", n, err)
	}
	short := 50 * time.Millisecond
	for i := range 3 {
		if _, err := l.TryAcquire(ctx, fmt.Sprint("expired-lease-", i), short); err != nil {
			t.Fatal(err)
		}
	}
	le, _, err := l.Claim(ctx, "expired-record", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Complete(ctx, le, []byte("r"), short); err != nil {
		t.Fatal(err)
	}
	live, err := l.TryAcquire(ctx, "live-lease", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	le, _, err = l.Claim(ctx, "live-record", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Complete(ctx, le, []byte("r"), time.Hour); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * short) // the server's clock is what is under test
	n, err := l.Cleanup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("Cleanup deleted %d rows, want the 4 expired ones", n)
	}
	var keys []string
	rows, err := pool.Query(ctx, fmt.Sprintf("SELECT convert_from(key, 'UTF8') FROM %s ORDER BY key", table))
	if err != nil {
		t.Fatal(err)
	}
	keys, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(keys, ",") != "live-lease,live-record" {
		t.Errorf("rows left: %v, want live-lease and live-record", keys)
	}
	if err := live.Release(ctx); err != nil {
		t.Errorf("the live lease after Cleanup: %v", err)
	}
}

// TestCleanerRuns checks that a Locker's cleaner deletes expired rows on
// its own.
func TestCleanerRuns(t *testing.T) {
	table := testTable(t)
	l := newLocker(t, pglock.WithTable(table), pglock.WithCleanupInterval(100*time.Millisecond))
	pool := newPool(t, postgresURL(t), nil)
	ctx := t.Context()
	if _, err := l.TryAcquire(ctx, "k", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the cleaner deletes the expired row", 10*time.Second, func() bool {
		var n int
		err := pool.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n)
		return err == nil && n == 0
	})
}

// TestMigrate checks that a configured schema and table are created on
// first use, that Migrate can run many times at once, and that Schema
// lists what it runs.
func TestMigrate(t *testing.T) {
	schema, table := testTable(t), "Locks"
	l := newLocker(t, pglock.WithSchema(schema), pglock.WithTable(table))
	pool := newPool(t, postgresURL(t), nil)
	ctx := t.Context()
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") })
	le, err := l.TryAcquire(ctx, "k", time.Minute) // creates schema, table, sequence, index
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s."Locks"`, schema)).Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows in %s.\"Locks\": %d, %v", schema, n, err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- newLocker(t, pglock.WithSchema(schema), pglock.WithTable(table)).Migrate(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent Migrate: %v", err)
		}
	}
	if err := le.Release(ctx); err != nil {
		t.Errorf("Release after Migrate: %v", err)
	}
	stmts := strings.Join(l.Schema(), ";\n")
	for _, want := range []string{`CREATE SCHEMA IF NOT EXISTS "` + schema + `"`, `"Locks_token"`, `"Locks_expires"`} {
		if !strings.Contains(stmts, want) {
			t.Errorf("Schema() lacks %s:\n%s", want, stmts)
		}
	}
}

// TestInvalidConfig checks that a bad option or a nil pool is reported by
// New, once, with an error matching lock.ErrInvalidArgument, never a panic.
func TestInvalidConfig(t *testing.T) {
	pool := newPool(t, "postgres://127.0.0.1:1/x?sslmode=disable", nil) // never connects
	for name, opts := range map[string][]pglock.Option{
		"table":           {pglock.WithTable("bad name")},
		"long table":      {pglock.WithTable(strings.Repeat("t", 51))},
		"schema":          {pglock.WithSchema("a.b")},
		"cleanup":         {pglock.WithCleanupInterval(-time.Second)},
		"record size":     {pglock.WithMaxRecordSize(0)},
		"record size 2":   {pglock.WithMaxRecordSize(1 << 30)},
		"two bad options": {pglock.WithSchema("a.b"), pglock.WithMaxRecordSize(0)},
	} {
		if l, err := pglock.New(pool, opts...); !errors.Is(err, lock.ErrInvalidArgument) || l != nil {
			t.Errorf("New with a bad option (%s): %v, %v; want nil, ErrInvalidArgument", name, l, err)
		}
	}
	if l, err := pglock.New(nil); !errors.Is(err, lock.ErrInvalidArgument) || l != nil {
		t.Errorf("New(nil): %v, %v; want nil, ErrInvalidArgument", l, err)
	}
}

// TestClosed checks what a closed Locker still does: its leases work, new
// work is refused with ErrClosed, and a subscription reports it.
func TestClosed(t *testing.T) {
	l := newLocker(t)
	ctx := t.Context()
	key := "closed/" + testTable(t)
	le, err := l.TryAcquire(ctx, key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := l.Subscribe(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Wait(ctx, nil); !errors.Is(err, pglock.ErrClosed) {
		t.Errorf("Wait after Close: %v, want ErrClosed", err)
	}
	if _, err := l.TryAcquire(ctx, key, time.Minute); !errors.Is(err, pglock.ErrClosed) {
		t.Errorf("TryAcquire after Close: %v, want ErrClosed", err)
	}
	if err := le.Refresh(ctx, time.Minute); err != nil {
		t.Errorf("Refresh of a lease taken before Close: %v", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Errorf("Release of a lease taken before Close: %v", err)
	}
}

// waitFor polls cond, which observes server state that sends no event,
// until it holds, and fails tb if that takes longer than within.
func waitFor(tb testing.TB, what string, within time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
