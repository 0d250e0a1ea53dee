package pglock_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/pglock"
	"github.com/idemlock/lock/idempotency"
	"github.com/jackc/pgx/v5/pgxpool"
)

// txFixture is a Locker on a table of the test's own and a business table
// beside it.
type txFixture struct {
	l, other *pglock.Locker
	pool     *pgxpool.Pool
	business string
}

func newTxFixture(t *testing.T) txFixture {
	t.Helper()
	table := testTable(t)
	f := txFixture{
		l:        newLocker(t, pglock.WithTable(table)),
		other:    newLocker(t, pglock.WithTable(table)),
		pool:     newPool(t, postgresURL(t), nil),
		business: table + "_orders",
	}
	ctx := t.Context()
	if _, err := f.pool.Exec(ctx, "CREATE TABLE "+f.business+" (id bigserial PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = f.pool.Exec(context.Background(), "DROP TABLE "+f.business)
	})
	return f
}

// orders returns how many business rows were committed.
func (f txFixture) orders(t *testing.T) int {
	t.Helper()
	var n int
	if err := f.pool.QueryRow(t.Context(), "SELECT count(*) FROM "+f.business).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// work inserts a business row and completes le in one transaction, then
// commits or rolls back.
func (f txFixture) work(t *testing.T, le lock.Lease, record string, commit bool) error {
	t.Helper()
	ctx := t.Context()
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "INSERT INTO "+f.business+" DEFAULT VALUES"); err != nil {
		t.Fatal(err)
	}
	if err := f.l.CompleteTx(ctx, tx, le, []byte(record), time.Hour); err != nil {
		return err
	}
	if commit {
		return tx.Commit(ctx)
	}
	return tx.Rollback(ctx)
}

func TestCompleteTxCommit(t *testing.T) {
	f := newTxFixture(t)
	ctx := t.Context()
	le, _, err := f.l.Claim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.work(t, le, "done", true); err != nil {
		t.Fatal(err)
	}
	if n := f.orders(t); n != 1 {
		t.Errorf("%d business rows after the commit, want 1", n)
	}
	if le2, rec, err := f.other.Claim(ctx, "k", time.Minute); err != nil || le2 != nil || string(rec) != "done" {
		t.Errorf("Claim after the commit = %v, %q, %v; want the record", le2, rec, err)
	}
	if err := le.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release after the commit: %v, want ErrNotHeld", err)
	}
	// A second transaction of the same lease must not commit its work
	// again: the key is completed, not held.
	if err := f.work(t, le, "again", true); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("CompleteTx of a completed lease: %v, want ErrNotHeld", err)
	}
	if n := f.orders(t); n != 1 {
		t.Errorf("%d business rows after a second transaction, want 1", n)
	}
}

func TestCompleteTxRollback(t *testing.T) {
	f := newTxFixture(t)
	ctx := t.Context()
	le, _, err := f.l.Claim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.work(t, le, "rolled back", false); err != nil {
		t.Fatal(err)
	}
	if n := f.orders(t); n != 0 {
		t.Errorf("%d business rows after the rollback, want 0", n)
	}
	if _, _, err := f.other.Claim(ctx, "k", time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Errorf("Claim after the rollback: %v, want ErrNotAcquired (the lease still holds)", err)
	}
	if err := f.work(t, le, "done", true); err != nil {
		t.Fatalf("CompleteTx after a rolled-back one: %v", err)
	}
	if _, rec, err := f.other.Claim(ctx, "k", time.Minute); err != nil || string(rec) != "done" {
		t.Errorf("Claim after the commit = %q, %v", rec, err)
	}
}

func TestCompleteTxLostLease(t *testing.T) {
	f := newTxFixture(t)
	ctx := t.Context()
	le, _, err := f.l.Claim(ctx, "expired", 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the server's clock is what is under test
	if err := f.work(t, le, "late", true); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("CompleteTx of an expired lease: %v, want ErrNotHeld", err)
	}
	// Taken over: the new owner's claim stands, and the stale work is not
	// committed.
	newer, _, err := f.other.Claim(ctx, "expired", time.Minute)
	if err != nil || newer == nil {
		t.Fatalf("Claim of the expired key: %v", err)
	}
	if err := f.work(t, le, "stale", true); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("CompleteTx of a lease taken over: %v, want ErrNotHeld", err)
	}
	if n := f.orders(t); n != 0 {
		t.Errorf("%d business rows committed by a lost lease, want 0", n)
	}
	if err := f.other.Complete(ctx, newer, []byte("fresh"), time.Hour); err != nil {
		t.Errorf("Complete by the newer owner: %v", err)
	}
}

// TestCompleteTxBlocksClaims checks that while the transaction that
// completed a key is open, the key cannot be taken over even after the
// lease's TTL: a Claim waits for the transaction and returns its record.
func TestCompleteTxBlocksClaims(t *testing.T) {
	f := newTxFixture(t)
	ctx := t.Context()
	le, _, err := f.l.Claim(ctx, "k", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := f.l.CompleteTx(ctx, tx, le, []byte("done"), time.Hour); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // past the lease's TTL: the row lock holds the key now
	type claimed struct {
		le  lock.Lease
		rec []byte
		err error
	}
	got := make(chan claimed, 1)
	go func() {
		le, rec, err := f.other.Claim(ctx, "k", time.Minute)
		got <- claimed{le, rec, err}
	}()
	waitFor(t, "the Claim waits for the transaction", 10*time.Second, func() bool {
		var waiting bool
		err := f.pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND locktype = 'transactionid')`).Scan(&waiting)
		return err == nil && waiting
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	c := <-got
	if c.err != nil || c.le != nil || string(c.rec) != "done" {
		t.Errorf("Claim that waited for the commit = %v, %q, %v; want the record", c.le, c.rec, c.err)
	}
}

func TestCompleteTxBadInput(t *testing.T) {
	f := newTxFixture(t)
	ctx := t.Context()
	le, _, err := f.l.Claim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	otherTable := mustNew(t, f.pool, pglock.WithTable("t_other"), pglock.WithCleanupInterval(0))
	defer otherTable.Close()
	small := mustNew(t, f.pool, pglock.WithMaxRecordSize(4), pglock.WithTable(tableOf(t, f)), pglock.WithCleanupInterval(0))
	defer small.Close()
	smallLease, _, err := small.Claim(ctx, "k-small", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var nilCtx context.Context // the bad input
	for name, err := range map[string]error{
		"nil tx":        f.l.CompleteTx(ctx, nil, le, []byte("r"), time.Hour),
		"nil lease":     f.l.CompleteTx(ctx, tx, nil, []byte("r"), time.Hour),
		"zero retain":   f.l.CompleteTx(ctx, tx, le, []byte("r"), 0),
		"other table":   otherTable.CompleteTx(ctx, tx, le, []byte("r"), time.Hour),
		"record size":   small.CompleteTx(ctx, tx, smallLease, []byte("12345"), time.Hour),
		"other Locker":  small.CompleteTx(ctx, tx, le, []byte("r"), time.Hour),
		"nil context":   f.l.CompleteTx(nilCtx, tx, le, []byte("r"), time.Hour),
		"foreign lease": f.l.CompleteTx(ctx, tx, foreignLease{}, []byte("r"), time.Hour),
	} {
		if err == nil || errors.Is(err, lock.ErrNotHeld) {
			t.Errorf("%s: %v, want a typed error other than ErrNotHeld", name, err)
		}
		if name == "record size" && !errors.Is(err, pglock.ErrRecordTooLarge) {
			t.Errorf("record size: %v, want ErrRecordTooLarge", err)
		}
	}
	if err := le.Release(ctx); err != nil {
		t.Errorf("the lease after bad CompleteTx calls: %v", err)
	}
}

func tableOf(t *testing.T, f txFixture) string {
	t.Helper()
	return f.business[:len(f.business)-len("_orders")]
}

type foreignLease struct{ lock.Lease }

// TestGuardOnPostgres runs the idempotency middleware with a Locker as its
// Store: the handler runs once per key, duplicates are replayed.
func TestGuardOnPostgres(t *testing.T) {
	l := newLocker(t, pglock.WithTable(testTable(t)))
	g, err := idempotency.New(l, idempotency.WithScope(func(*http.Request) string { return "user-1" }))
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	srv := httptest.NewServer(g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "charged")
	})))
	defer srv.Close()
	for i := range 3 {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/pay", nil)
		req.Header.Set("Idempotency-Key", "abc")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || string(body) != "charged" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		if replayed := resp.Header.Get("Idempotent-Replayed") == "true"; replayed != (i > 0) {
			t.Errorf("request %d: replayed=%v", i, replayed)
		}
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("the handler ran %d times for one key, want 1", n)
	}
}
