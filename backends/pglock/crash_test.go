package pglock_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idemlock/lock/backends/pglock"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The crash test runs the orders handler of example_orders_test.go in a
// child process (this test binary, re-executed), stops it with SIGKILL at
// a chosen point of a request, and retries the request against a fresh
// child, as a client and a process supervisor would.
const (
	envChild   = "PGLOCK_TEST_CHILD_URL" // the child's database URL
	envCrashAt = "PGLOCK_TEST_CRASH_AT"  // where the child stops: commit or respond
)

func TestMain(m *testing.M) {
	if u := os.Getenv(envChild); u != "" {
		runChild(u, os.Getenv(envCrashAt))
		return
	}
	os.Exit(m.Run())
}

// runChild serves the orders handler on a free loopback port, prints the
// address, and at the crash point prints "AT <point>" and waits to be
// killed.
func runChild(rawURL, crashAt string) {
	halt := func(point string) {
		fmt.Printf("AT %s\n", point)
		select {} // SIGKILL comes here
	}
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		panic(err)
	}
	if crashAt == "commit" {
		// Stop just before COMMIT is sent: the order and its record are
		// written in the open transaction, which the server rolls back
		// when the connection drops.
		cfg.ConnConfig.Tracer = commitTracer{halt: func() { halt("commit") }}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		panic(err)
	}
	locker, err := pglock.New(pool, pglock.WithCleanupInterval(0))
	if err != nil {
		panic(err)
	}
	var h http.Handler = &orders{pool: pool, locker: locker, ttl: time.Second}
	if crashAt == "respond" {
		// Stop after the commit, before the response leaves.
		next := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(haltWriter{ResponseWriter: w, halt: func() { halt("respond") }}, r)
		})
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	panic(http.Serve(ln, h))
}

type commitTracer struct{ halt func() }

func (c commitTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.EqualFold(strings.TrimSpace(d.SQL), "commit") {
		c.halt()
	}
	return ctx
}

func (commitTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

type haltWriter struct {
	http.ResponseWriter
	halt func()
}

func (w haltWriter) WriteHeader(code int) {
	if code == http.StatusCreated && w.Header().Get("Idempotent-Replayed") == "" {
		w.halt()
	}
	w.ResponseWriter.WriteHeader(code)
}

// child is one running child process.
type child struct {
	cmd   *exec.Cmd
	addr  string
	lines *bufio.Scanner
}

func startChild(t *testing.T, rawURL, crashAt string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+rawURL, envCrashAt+"="+crashAt)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, lines: bufio.NewScanner(out)}
	t.Cleanup(c.kill)
	addr, ok := strings.CutPrefix(c.next(t), "LISTEN ")
	if !ok {
		t.Fatalf("child did not report its address")
	}
	c.addr = addr
	return c
}

// next returns the child's next line of output.
func (c *child) next(t *testing.T) string {
	t.Helper()
	if !c.lines.Scan() {
		t.Fatalf("child's output ended: %v", c.lines.Err())
	}
	return c.lines.Text()
}

func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.cmd.Wait()
}

// post sends the order request and returns status, the replay header and
// the body.
func post(c *child, key string) (int, bool, []byte, error) {
	req, _ := http.NewRequest(http.MethodPost, "http://"+c.addr+"/orders?item=book", nil)
	req.Header.Set("Idempotency-Key", key)
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, false, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Idempotent-Replayed") == "true", body, err
}

// TestCrashBetweenWriteAndResponse kills the process that handles an
// order request between the business write and the response, at two
// points, and retries the request against a new process: the order exists
// exactly once, and the retry's response names it.
func TestCrashBetweenWriteAndResponse(t *testing.T) {
	base := postgresURL(t)
	admin := newPool(t, base, nil)
	ctx := t.Context()
	schema := "crash_" + testTable(t)
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE SCHEMA %s; CREATE TABLE %s.orders (id bigserial PRIMARY KEY, item text NOT NULL)", schema, schema)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") })
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema) // the children's orders and lease tables
	u.RawQuery = q.Encode()
	rawURL := u.String()
	migrator := mustNew(t, newPool(t, rawURL, nil), pglock.WithCleanupInterval(0))
	defer migrator.Close()
	if err := migrator.Migrate(ctx); err != nil { // the children never run DDL
		t.Fatal(err)
	}

	for _, tc := range []struct {
		crashAt      string
		wantReplayed bool // the retry replays the first response
	}{
		{"commit", false}, // nothing committed: the retry does the work, once
		{"respond", true}, // committed: the retry gets the stored response
	} {
		t.Run(tc.crashAt, func(t *testing.T) {
			key := "key-" + tc.crashAt
			first := startChild(t, rawURL, tc.crashAt)
			sent := make(chan error, 1)
			go func() { _, _, _, err := post(first, key); sent <- err }()
			if got := first.next(t); got != "AT "+tc.crashAt {
				t.Fatalf("child said %q, want AT %s", got, tc.crashAt)
			}
			first.kill()
			if err := <-sent; err == nil {
				t.Fatal("the request to the killed process got a response")
			}

			second := startChild(t, rawURL, "")
			var (
				status   int
				replayed bool
				body     []byte
			)
			deadline := time.Now().Add(30 * time.Second)
			for {
				status, replayed, body, err = post(second, key)
				if err != nil {
					t.Fatal(err)
				}
				if status != http.StatusConflict || time.Now().After(deadline) {
					break
				}
				time.Sleep(100 * time.Millisecond) // the dead process's lease runs out; 409 says retry
			}
			if status != http.StatusCreated || replayed != tc.wantReplayed {
				t.Fatalf("retry: %d replayed=%v %s, want 201 replayed=%v", status, replayed, body, tc.wantReplayed)
			}
			var o order
			if err := json.Unmarshal(body, &o); err != nil {
				t.Fatal(err)
			}
			var n int
			var id int64
			if err := admin.QueryRow(ctx, fmt.Sprintf("SELECT count(*), coalesce(max(id), 0) FROM %s.orders", schema)).Scan(&n, &id); err != nil {
				t.Fatal(err)
			}
			if n != 1 || id != o.ID {
				t.Fatalf("%d orders (last id %d) after the crash and the retry, want exactly the one the response names (%d)", n, id, o.ID)
			}
			// And again: a replay of the same order.
			status, replayed, again, err := post(second, key)
			if err != nil || status != http.StatusCreated || !replayed || string(again) != string(body) {
				t.Fatalf("second retry: %d replayed=%v %s %v, want the stored response %s", status, replayed, again, err, body)
			}
			if _, err := admin.Exec(ctx, fmt.Sprintf("TRUNCATE %s.orders", schema)); err != nil {
				t.Fatal(err)
			}
		})
	}
}
