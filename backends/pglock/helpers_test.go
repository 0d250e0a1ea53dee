package pglock_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock/backends/pglock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// postgresURL returns the shared PostgreSQL test server's URL (see
// testenv.PostgresURL: skipped without it, failed under make test).
func postgresURL(t testing.TB) string { return testenv.PostgresURL(t) }

// poolConfig parses rawURL for a test pool: no TLS (the wire wrapper reads
// plain messages) and the given dialer wrapper, if any.
func poolConfig(t testing.TB, rawURL string, w *wire) *pgxpool.Config {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	cfg.ConnConfig.TLSConfig = nil
	cfg.ConnConfig.Fallbacks = nil
	if w != nil {
		// No ping when an idle connection is handed out (pgxpool's default
		// after a second idle): on a loaded machine the ping outlasted the
		// conformance suite's mid-flight cancellation, the statement was
		// never sent, and the stall armed for it hung the next call, which
		// has no deadline.
		cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
		var d net.Dialer
		cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return w.wrap(c), nil
		}
	}
	return cfg
}

// newPool returns a pool on rawURL, closed when the test ends.
func newPool(t testing.TB, rawURL string, w *wire) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.NewWithConfig(context.Background(), poolConfig(t, rawURL, w))
	if err != nil {
		t.Fatalf("pgxpool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// mustNew is pglock.New for options that are valid.
func mustNew(t testing.TB, pool *pgxpool.Pool, opts ...pglock.Option) *pglock.Locker {
	t.Helper()
	l, err := pglock.New(pool, opts...)
	if err != nil {
		t.Fatalf("pglock.New: %v", err)
	}
	return l
}

// newLocker returns a Locker with a pool of its own on the shared server,
// as another process would have; both are closed when the test ends.
func newLocker(t testing.TB, opts ...pglock.Option) *pglock.Locker {
	t.Helper()
	l, _ := newLockerOn(t, postgresURL(t), opts...)
	return l
}

// newLockerOn returns a Locker on rawURL with a pool of its own whose wire
// traffic is counted and can be faulted. The pool has a connection open,
// as a running process's would: a stall armed for a call then hits the
// call's statement, not a connection still being dialled when the call's
// context ends (under load a dial outlasts the conformance suite's 100 ms,
// and the stall would stay armed for a later call without a deadline).
func newLockerOn(t testing.TB, rawURL string, opts ...pglock.Option) (*pglock.Locker, *wire) {
	t.Helper()
	w := newWire(t)
	pool := newPool(t, rawURL, w)
	if err := pool.Ping(t.Context()); err != nil {
		t.Fatalf("connecting to the test server: %v", err)
	}
	l := mustNew(t, pool, opts...)
	t.Cleanup(func() { _ = l.Close() }) // runs before pool.Close
	return l, w
}

// testTable returns a table name of the test's own, so that tests that
// look at rows see only theirs, and drops the table when the test ends.
func testTable(t testing.TB) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := fmt.Sprintf("t_%x", b)
	t.Cleanup(func() {
		raw := os.Getenv(testenv.EnvPostgresURL)
		if raw == "" {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, raw)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %s, %s_waiters; DROP SEQUENCE IF EXISTS %s_token", name, name, name))
	})
	return name
}

// wire counts the frontend messages of every connection it wrapped and
// carries out the faults of its FaultSwitch on them. It sits below pgx, at
// the net.Conn, so the faults are those of a network: a reply lost after
// the server applied the request, a request that never gets an answer. A
// request is a write that carries an Execute message (what every lock
// statement sends); simple queries (pgxpool's pings, the listening
// connection's LISTEN) are never faulted.
type wire struct {
	*testenv.FaultSwitch
	trips   atomic.Int64  // Sync and Query messages: one round trip each
	stalled chan struct{} // receives one value per request swallowed
	// held, when set, is closed to let the listening connection's reads
	// through again (HoldNotifications).
	held atomic.Pointer[chan struct{}]

	mu    sync.Mutex
	conns []*wireConn // every connection wrapped, for BreakListener
}

// HoldNotifications holds back what the server sends the listening
// connection (the one that sent LISTEN), as a slow network or a slow
// listening goroutine would, until the returned function is called (it is
// also called when the test ends).
func (w *wire) HoldNotifications(t testing.TB) (deliver func()) {
	ch := make(chan struct{})
	w.held.Store(&ch)
	var once sync.Once
	deliver = func() {
		once.Do(func() {
			w.held.Store(nil)
			close(ch)
		})
	}
	t.Cleanup(deliver)
	return deliver
}

func newWire(t testing.TB) *wire {
	return &wire{FaultSwitch: testenv.NewFaultSwitch(t), stalled: make(chan struct{}, 16)}
}

var _ conformance.Faults = (*wire)(nil)

// RoundTrips returns the round trips all wrapped connections made.
func (w *wire) RoundTrips() int64 { return w.trips.Load() }

// Stalled returns a channel that receives a value each time a stalled
// request has been swallowed.
func (w *wire) Stalled() <-chan struct{} { return w.stalled }

func (w *wire) wrap(c net.Conn) net.Conn {
	wc := &wireConn{Conn: c, w: w, startup: true}
	w.mu.Lock()
	w.conns = append(w.conns, wc)
	w.mu.Unlock()
	return wc
}

// BreakListener closes the listening connection (the one that sent
// LISTEN), as a network failure would; the Locker's Listener reconnects.
func (w *wire) BreakListener(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.conns {
		if c.listen.Load() {
			_ = c.Conn.Close()
			return
		}
	}
	t.Fatal("no listening connection to break")
}

// wireConn parses the frontend message stream of one connection.
type wireConn struct {
	net.Conn
	w       *wire
	startup bool // the next message is the untyped startup message
	partial int  // bytes of the current message still to come in later writes
	hdr     []byte
	drop    atomic.Bool // LoseNextReply: read and discard up to ReadyForQuery, then fail (set by Write, read by pgx's background reader too)
	listen  atomic.Bool // the connection sent LISTEN: HoldNotifications holds its reads
}

func (c *wireConn) Write(p []byte) (int, error) {
	var execs, trips int
	c.scan(p, func(typ byte) {
		switch typ {
		case 'E':
			execs++
		case 'S', 'Q':
			trips++
		}
	})
	if bytes.Contains(bytes.ToLower(p), []byte("listen ")) {
		c.listen.Store(true)
	}
	c.w.trips.Add(int64(trips))
	if execs > 0 {
		switch c.w.Take() {
		case testenv.Stall:
			// Swallowed: the server never sees it, and no answer comes
			// until pgx gives up at the caller's context (it sets a
			// deadline) or the pool closes the connection.
			select {
			case c.w.stalled <- struct{}{}:
			default:
			}
			return len(p), nil
		case testenv.LoseReply:
			c.drop.Store(true)
		}
	}
	return c.Conn.Write(p)
}

// scan calls fn with the type of every message that starts in p.
func (c *wireConn) scan(p []byte, fn func(byte)) {
	for len(p) > 0 {
		if c.partial > 0 {
			n := min(c.partial, len(p))
			c.partial -= n
			p = p[n:]
			continue
		}
		// A message header may itself be split; collect it.
		need := 5
		if c.startup {
			need = 4
		}
		n := min(need-len(c.hdr), len(p))
		c.hdr = append(c.hdr, p[:n]...)
		p = p[n:]
		if len(c.hdr) < need {
			return
		}
		if c.startup {
			c.partial = int(binary.BigEndian.Uint32(c.hdr)) - 4
			c.startup = false
		} else {
			fn(c.hdr[0])
			c.partial = int(binary.BigEndian.Uint32(c.hdr[1:])) - 4
		}
		c.hdr = c.hdr[:0]
	}
}

func (c *wireConn) Read(p []byte) (int, error) {
	if !c.drop.Load() {
		n, err := c.Conn.Read(p)
		if held := c.w.held.Load(); held != nil && c.listen.Load() {
			<-*held
		}
		return n, err
	}
	// The request was sent: wait for the server's whole answer (it ends
	// with ReadyForQuery, after the commit), throw it away and break the
	// connection, as a network that failed at that moment would.
	c.drop.Store(false)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(c.Conn, hdr[:]); err != nil {
			return 0, err
		}
		if _, err := io.CopyN(io.Discard, c.Conn, int64(binary.BigEndian.Uint32(hdr[1:]))-4); err != nil {
			return 0, err
		}
		if hdr[0] == 'Z' {
			break
		}
	}
	_ = c.Conn.Close()
	return 0, testenv.ErrLostReply
}
