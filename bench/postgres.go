package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock/backends/pglock"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// postgresPoll is how often the SKIP LOCKED lock retries while waiting.
const postgresPoll = 2 * time.Millisecond

func postgresBackend() Backend {
	return Backend{
		Name: "postgres",
		Env:  func(tb testing.TB) Env { return Env{PostgresURL: postgresURL(tb)} },
		Libs: []Lib{
			{
				Name: "idemlock",
				Desc: "idemlock pglock: one statement to take (row upsert, token from a sequence under a per-key " +
					"transaction advisory lock), one to release; waiters woken by LISTEN/NOTIFY",
				Setup: postgresSetup(func(tb testing.TB, pool *pgxpool.Pool) Client {
					l, err := pglock.New(pool, pglock.WithTable("idemlock_bench"))
					if err != nil {
						tb.Fatalf("pglock: %v", err)
					}
					tb.Cleanup(func() { _ = l.Close() })
					return idemClient{l}
				}),
			},
			{
				Name:        "idemlock-queued",
				Label:       "idemlock (WithQueue)",
				Desc:        "idemlock pglock with WithQueue: waiters queue per key (rows of a waiters table), a release hands the key straight to the head",
				HandoffOnly: true,
				Scaling:     true,
				Setup: postgresSetup(func(tb testing.TB, pool *pgxpool.Pool) Client {
					l, err := pglock.New(pool, pglock.WithTable("idemlock_bench"), pglock.WithQueue())
					if err != nil {
						tb.Fatalf("pglock: %v", err)
					}
					tb.Cleanup(func() { _ = l.Close() })
					return idemClient{l}
				}),
			},
			{
				Name:    "pg-advisory",
				Scaling: true,
				Desc: "a plain session advisory lock: pg_try_advisory_lock / pg_advisory_unlock on a pooled connection " +
					"kept for the whole hold (no TTL, no token); waiters block in pg_advisory_lock on the server",
				Setup: postgresSetup(func(_ testing.TB, pool *pgxpool.Pool) Client { return advisoryClient{pool} }),
			},
			{
				Name:       "pg-skip-locked",
				Label:      "SELECT … FOR UPDATE SKIP LOCKED (poll 2 ms)",
				PollPeriod: postgresPoll,
				Desc: "a row lock held by an open transaction: BEGIN, SELECT … FOR UPDATE SKIP LOCKED on the key's row " +
					"(inserted once), COMMIT to release (no TTL, no token); waiters retry every 2 ms",
				Setup: postgresSetup(func(tb testing.TB, pool *pgxpool.Pool) Client {
					if _, err := pool.Exec(context.Background(), "CREATE TABLE IF NOT EXISTS idemlock_bench_rows (key text PRIMARY KEY)"); err != nil {
						tb.Fatalf("creating the SKIP LOCKED table: %v", err)
					}
					return skipLockedClient{pool}
				}),
			},
		},
		Meter: newPostgresMeter,
		Load:  newPostgresMeter,
	}
}

// postgresURL returns the server's URL, skipping (or failing under
// IDEMLOCK_REQUIRE_SERVERS=1) when it is not set or not reachable, as
// testenv does for the other servers: testenv.PostgresURL, until
// internal/testenv has that accessor.
func postgresURL(tb testing.TB) string { return testenv.PostgresURL(tb) }

// postgresSetup returns a Setup whose clients each have a pgx pool of their
// own (pgxpool's defaults: up to max(4, GOMAXPROCS) connections), through
// env's dialer when it counts requests.
func postgresSetup(wrap func(testing.TB, *pgxpool.Pool) Client) func(testing.TB, Env) func() Client {
	return func(tb testing.TB, env Env) func() Client {
		return func() Client {
			cfg, err := pgxpool.ParseConfig(env.PostgresURL)
			if err != nil {
				tb.Fatalf("postgres: %v", err)
			}
			if env.PostgresDial != nil {
				cfg.ConnConfig.TLSConfig, cfg.ConnConfig.Fallbacks = nil, nil
				cfg.ConnConfig.DialFunc = env.PostgresDial
			}
			pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
			if err != nil {
				tb.Fatalf("postgres: %v", err)
			}
			tb.Cleanup(pool.Close)
			return wrap(tb, pool)
		}
	}
}

// advisoryKey maps a key to a session advisory lock id, as hand-written
// advisory locks do.
const advisoryKey = "hashtextextended($1, 0)"

// advisoryClient is the lock people write with session advisory locks: the
// lock belongs to the connection, so the connection is kept out of the
// pool until the release.
type advisoryClient struct{ pool *pgxpool.Pool }

type advisoryHeld struct {
	conn *pgxpool.Conn
	key  string
}

func (c advisoryClient) Try(ctx context.Context, key string) (Held, bool, error) {
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return nil, false, err
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock("+advisoryKey+")", key).Scan(&ok); err != nil {
		conn.Release()
		return nil, false, err
	}
	if !ok {
		conn.Release()
		return nil, false, nil
	}
	return advisoryHeld{conn, key}, true, nil
}

func (c advisoryClient) Lock(ctx context.Context, key string) (Held, error) {
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock("+advisoryKey+")", key); err != nil {
		// A cancelled wait may have been granted just before: never put a
		// connection that might hold the lock back into the pool.
		_ = conn.Conn().Close(context.Background())
		conn.Release()
		return nil, err
	}
	return advisoryHeld{conn, key}, nil
}

func (h advisoryHeld) Release(ctx context.Context) error {
	defer h.conn.Release()
	var ok bool
	if err := h.conn.QueryRow(ctx, "SELECT pg_advisory_unlock("+advisoryKey+")", h.key).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return errors.New("pg_advisory_unlock: the session did not hold the lock")
	}
	return nil
}

// skipLockedClient holds a lock as a row locked by an open transaction.
type skipLockedClient struct{ pool *pgxpool.Pool }

type skipLockedHeld struct{ tx pgx.Tx }

func (c skipLockedClient) Try(ctx context.Context, key string) (Held, bool, error) {
	for attempt := 0; ; attempt++ {
		tx, err := c.pool.Begin(ctx)
		if err != nil {
			return nil, false, err
		}
		var got string
		err = tx.QueryRow(ctx, "SELECT key FROM idemlock_bench_rows WHERE key = $1 FOR UPDATE SKIP LOCKED", key).Scan(&got)
		if err == nil {
			return skipLockedHeld{tx}, true, nil
		}
		_ = tx.Rollback(ctx)
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, false, err
		}
		if attempt > 0 {
			return nil, false, nil // the row exists and is locked
		}
		// Locked, or the key's row does not exist yet: create it once.
		tag, err := c.pool.Exec(ctx, "INSERT INTO idemlock_bench_rows (key) VALUES ($1) ON CONFLICT DO NOTHING", key)
		if err != nil {
			return nil, false, err
		}
		if tag.RowsAffected() == 0 {
			return nil, false, nil
		}
	}
}

func (c skipLockedClient) Lock(ctx context.Context, key string) (Held, error) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
		h, ok, err := c.Try(ctx, key)
		if err != nil || ok {
			return h, err
		}
		t.Reset(postgresPoll)
	}
}

func (h skipLockedHeld) Release(ctx context.Context) error { return h.tx.Commit(ctx) }

// postgresMeter counts round trips on the client side, at the connection:
// every Sync (the end of an extended-protocol request) and every simple
// Query message is one request the server answers. Its Counts also hold
// "inflight": the requests sent and not yet answered (each is answered by
// one ReadyForQuery) when Stop read them, such as takes waiting in the
// server for a key's advisory lock, a backlog the sent count alone does not
// show.
type postgresMeter struct {
	n        atomic.Int64
	inflight atomic.Int64
	before   int64
}

func newPostgresMeter(_ testing.TB, env Env) (Env, Meter) {
	m := &postgresMeter{}
	var d net.Dialer
	env.PostgresDial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, m: m, out: messages{startup: true}, in: messages{ready: 1}}, nil
	}
	return env, m
}

func (m *postgresMeter) Start(testing.TB) { m.before = m.n.Load() }

func (m *postgresMeter) Stop(testing.TB) Counts {
	return Counts{"req": float64(m.n.Load() - m.before), "inflight": float64(m.inflight.Load())}
}

// countingConn parses the message streams of one connection: requests
// written, ReadyForQuery messages read.
type countingConn struct {
	net.Conn
	m       *postgresMeter
	out, in messages
	pending atomic.Int64 // requests of this connection not yet answered
	closed  atomic.Bool
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.out.scan(p, func(t byte) {
		if t == 'S' || t == 'Q' {
			c.m.n.Add(1)
			c.pending.Add(1)
			c.m.inflight.Add(1)
		}
	})
	return c.Conn.Write(p)
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.scan(p[:n], func(t byte) {
		if t != 'Z' {
			return
		}
		if c.in.ready > 0 { // the one that ends the start-up answers no request
			c.in.ready--
			return
		}
		c.pending.Add(-1)
		c.m.inflight.Add(-1)
	})
	return n, err
}

// Close forgets the connection's unanswered requests: no answer comes.
func (c *countingConn) Close() error {
	if !c.closed.Swap(true) {
		c.m.inflight.Add(-c.pending.Swap(0))
	}
	return c.Conn.Close()
}

// messages frames one direction of a connection's protocol stream: typed
// messages (type byte, length), after an untyped startup message on the
// frontend's side.
type messages struct {
	startup bool // the next message is the untyped startup message
	partial int  // bytes of the current message still to come
	hdr     []byte
	ready   int // backend: ReadyForQuery messages that answer no request
}

// scan feeds p to the framer, calling typed with each message's type.
func (s *messages) scan(p []byte, typed func(byte)) {
	for q := p; len(q) > 0; {
		if s.partial > 0 {
			n := min(s.partial, len(q))
			s.partial -= n
			q = q[n:]
			continue
		}
		need := 5
		if s.startup {
			need = 4
		}
		n := min(need-len(s.hdr), len(q))
		s.hdr = append(s.hdr, q[:n]...)
		q = q[n:]
		if len(s.hdr) < need {
			break
		}
		if s.startup {
			s.partial = int(binary.BigEndian.Uint32(s.hdr)) - 4
			s.startup = false
		} else {
			typed(s.hdr[0])
			s.partial = int(binary.BigEndian.Uint32(s.hdr[1:])) - 4
		}
		s.hdr = s.hdr[:0]
	}
}

// postgresVersion returns the server's version.
func postgresVersion(rawURL string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		return fmt.Sprint("unknown (", err, ")")
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return fmt.Sprint("unknown (", err, ")")
	}
	v, _, _ = strings.Cut(v, " ")
	return v
}
