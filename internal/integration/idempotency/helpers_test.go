package idempotency_test

// The helpers below are copies of those of the idempotency package's
// tests (helpers_test.go, edges_test.go, middleware_test.go, do_test.go,
// bench_test.go): this package's tests were that package's tests on the
// networked backends, moved to this module so that the root module needs
// no client library, and test files cannot be imported across packages.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

// userScope names the caller by the X-User header, "anonymous" without one.
func userScope(r *http.Request) string {
	if u := r.Header.Get("X-User"); u != "" {
		return u
	}
	return "anonymous"
}

// counter is a handler that counts its runs and answers 201 with a body
// naming the run, a Location, and headers that must never be replayed.
type counter struct {
	runs atomic.Int64
}

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := c.runs.Add(1)
	body, _ := io.ReadAll(r.Body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Location", "/orders/1")
	h.Set("Set-Cookie", "session=secret")
	h.Set("X-Private", "not on the allow-list")
	h.Set("Date", "Mon, 01 Jan 2024 00:00:00 GMT")
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, `{"run":`+itoa(n)+`,"body":"`+string(body)+`"}`)
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

type req struct {
	method, path, key, body, user string
	keys                          []string // several header lines
	noKey                         bool
	ctx                           context.Context
}

// send runs one request through h in process.
func send(h http.Handler, q req) *httptest.ResponseRecorder {
	if q.method == "" {
		q.method = http.MethodPost
	}
	if q.path == "" {
		q.path = "/orders"
	}
	r := httptest.NewRequest(q.method, q.path, strings.NewReader(q.body))
	if q.ctx != nil {
		r = r.WithContext(q.ctx)
	}
	switch {
	case q.keys != nil:
		r.Header["Idempotency-Key"] = q.keys
	case !q.noKey:
		r.Header.Set("Idempotency-Key", q.key)
	}
	if q.user != "" {
		r.Header.Set("X-User", q.user)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// problem asserts that w is an RFC 9457 problem of the given status and type.
func problem(t *testing.T, w *httptest.ResponseRecorder, status int, typ string) idempotency.Problem {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d (body %s)", w.Code, status, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type %q, want application/problem+json", ct)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	var p idempotency.Problem
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("problem body %q: %v", w.Body, err)
	}
	if p.Type != typ || p.Status != status || p.Title == "" || p.Detail == "" {
		t.Errorf("problem %+v, want type %s, status %d, a title and a detail", p, typ, status)
	}
	if w.Header().Get(idempotency.ReplayedHeader) != "" {
		t.Errorf("a problem response carries %s", idempotency.ReplayedHeader)
	}
	return p
}

// outlivesClient is the checkout case of item 1: the client gives up while
// the handler keeps working (its charge runs on context.WithoutCancel)
// for several lease TTLs. Renewal must last as long as the handler, so
// every duplicate meanwhile finds the key in progress, and afterwards gets
// the stored response: the handler runs once.
func outlivesClient(t *testing.T, g *idempotency.Guard, ttl time.Duration, key string) {
	t.Helper()
	var runs atomic.Int64
	started, proceed := make(chan struct{}), make(chan struct{})
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) > 1 {
			w.WriteHeader(http.StatusCreated) // a second charge
			return
		}
		close(started)
		<-proceed // the provider is slow, whatever the client does
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "charged once")
	}))
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- send(m, req{key: key, user: "u", ctx: ctx}) }()
	<-started
	cancel() // the client gives up
	// Had renewal ended with the client, the key would be free after one
	// TTL: duplicates for three TTLs must all get 409.
	polls := 0
	left := time.Now()
	for time.Since(left) < 3*ttl {
		polls++
		if w := send(m, req{key: key, user: "u"}); w.Code != http.StatusConflict {
			t.Errorf("duplicate %d, %v after the client left (lease TTL %v): %d %s, want 409 (the handler is still running)", polls, time.Since(left), ttl, w.Code, w.Body)
			break
		}
		time.Sleep(ttl / 10) // pacing the duplicates, not synchronising
	}
	close(proceed)
	<-first
	w := send(m, req{key: key, user: "u"})
	if w.Code != http.StatusCreated || w.Header().Get(idempotency.ReplayedHeader) != "true" || w.Body.String() != "charged once" {
		t.Errorf("retry after the handler finished: %d %q replayed=%q, want the stored 201", w.Code, w.Body, w.Header().Get(idempotency.ReplayedHeader))
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("the handler ran %d times for one key (%d duplicates while it worked)", n, polls)
	}
}

// workOutlivesCaller is outlivesClient for workers: the caller's context
// is cancelled (a shutdown) while fn finishes its work.
func workOutlivesCaller(t *testing.T, g *idempotency.Guard, ttl time.Duration, key string) {
	t.Helper()
	var runs atomic.Int64
	started, proceed := make(chan struct{}), make(chan struct{})
	fn := func(context.Context) (string, error) {
		if runs.Add(1) > 1 {
			return "sent twice", nil
		}
		close(started)
		<-proceed
		return "sent", nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		v   string
		err error
	}
	first := make(chan result)
	go func() {
		v, err := idempotency.Do(ctx, g, key, fn)
		first <- result{v, err}
	}()
	<-started
	cancel() // shutdown: the caller stops waiting, fn goes on
	polls := 0
	left := time.Now()
	for time.Since(left) < 3*ttl {
		polls++
		if _, err := idempotency.Do(context.Background(), g, key, fn); !errors.Is(err, idempotency.ErrInProgress) {
			t.Errorf("duplicate %d, %v after the caller cancelled (lease TTL %v): %v, want ErrInProgress (fn is still running)", polls, time.Since(left), ttl, err)
			break
		}
		time.Sleep(ttl / 10)
	}
	close(proceed)
	if r := <-first; r.err != nil || r.v != "sent" {
		t.Errorf("the first call: %q, %v; want its result stored and no error", r.v, r.err)
	}
	if v, err := idempotency.Do(context.Background(), g, key, fn); err != nil || v != "sent" {
		t.Errorf("redelivery after fn finished: %q, %v; want the stored result", v, err)
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("fn ran %d times for one key", n)
	}
}

// blocking is a handler that signals when it starts and waits to be let go.
type blocking struct {
	counter
	started chan struct{}
	proceed chan struct{}
	status  int
}

func newBlocking() *blocking {
	return &blocking{started: make(chan struct{}, 100), proceed: make(chan struct{}), status: http.StatusCreated}
}

func (b *blocking) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.runs.Add(1)
	b.started <- struct{}{}
	select {
	case <-b.proceed:
	case <-r.Context().Done():
	}
	w.WriteHeader(b.status)
	_, _ = io.WriteString(w, "done")
}

// statusHandler answers with a fixed status, counting runs.
type statusHandler struct {
	counter
	status   int
	terminal bool
}

func (s *statusHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.runs.Add(1)
	if s.terminal && !idempotency.MarkTerminal(w) {
		panic("MarkTerminal found no guarded writer")
	}
	w.WriteHeader(s.status)
	_, _ = fmt.Fprintf(w, "status %d", s.status)
}

type receipt struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

// nopWriter is a ResponseWriter that keeps nothing, so the benchmark
// measures the middleware and not httptest's recorder.
type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) WriteHeader(int)             {}
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// instances returns n Guards on one Store, as n processes would have.
func instances(t *testing.T, store idempotency.Store, n int, opts ...idempotency.Option) []*idempotency.Guard {
	t.Helper()
	gs := make([]*idempotency.Guard, n)
	for i := range gs {
		g, err := idempotency.New(store, append([]idempotency.Option{idempotency.WithScope(func(*http.Request) string { return "jobs" }),
			idempotency.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		gs[i] = g
	}
	return gs
}

// onceRace has every instance call Once for key at the same time, twice,
// and returns how many calls ran fn.
func onceRace(t *testing.T, gs []*idempotency.Guard, key string, period time.Duration) int {
	t.Helper()
	var mu sync.Mutex
	runs := 0
	for round := range 2 {
		var wg sync.WaitGroup
		for _, g := range gs {
			wg.Go(func() {
				ran, err := idempotency.Once(t.Context(), g, key, period, func(ctx context.Context, start time.Time) error {
					mu.Lock()
					runs++
					mu.Unlock()
					if !start.Equal(start.Truncate(period)) || start.After(time.Now()) {
						t.Errorf("fn got period start %v, not the current period's", start)
					}
					if tok, ok := idempotency.TokenFromContext(ctx); !ok || tok == 0 {
						t.Errorf("no fencing token in fn's context")
					}
					return nil
				})
				switch {
				case errors.Is(err, idempotency.ErrInProgress) && round == 0:
				case err != nil:
					t.Errorf("Once: %v", err)
				case ran && round == 1:
					t.Errorf("ran again in the second round, in the same period")
				}
			})
		}
		wg.Wait()
	}
	return runs
}
