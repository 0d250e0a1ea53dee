package bench

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The postgres meter counts a request that waits in the server as in
// flight until it is answered: quiesce relies on it to tell that the
// waiters' first takes, queued on a key's advisory lock, are done.
func TestPostgresMeterInflight(t *testing.T) {
	env, m := newPostgresMeter(t, Env{PostgresURL: postgresURL(t)})
	cfg, err := pgxpool.ParseConfig(env.PostgresURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.TLSConfig, cfg.ConnConfig.Fallbacks = nil, nil
	cfg.ConnConfig.DialFunc = env.PostgresDial
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	holder, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	const key = 7_733_019 // the advisory lock both sessions want
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
		t.Fatal(err)
	}
	m.Start(t)
	if c := m.Stop(t); c["inflight"] != 0 {
		t.Fatalf("inflight = %v with every request answered, want 0", c["inflight"])
	}
	var pid int32
	done := make(chan error, 1)
	waiter, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := waiter.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer waiter.Release()
		_, err := waiter.Exec(ctx, "SELECT pg_advisory_lock($1)", key)
		done <- err
	}()
	// The event is the server's: the waiter's session waits for the lock.
	for waiting := false; !waiting; {
		if err := holder.QueryRow(ctx, "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if ctx.Err() != nil {
			t.Fatal("the waiter's session never waited for the lock")
		}
	}
	if c := m.Stop(t); c["inflight"] != 1 {
		t.Errorf("inflight = %v while one request waits in the server, want 1", c["inflight"])
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1)", key); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if c := m.Stop(t); c["inflight"] != 0 {
		t.Errorf("inflight = %v once the waiting request was answered, want 0", c["inflight"])
	}
}
