package idempotency_test

// Regression tests for the failure edges of issue 12 ("keep one effect per
// key at the failure edges") and the guard's half of issue 13 item 5. Each
// failed on the code before the fix; edges_api_test.go has those that
// need API added with the fix.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

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

// Item 1, HTTP: the client's disconnect must not end renewal.
func TestClientGoneHandlerOutlivesLease(t *testing.T) {
	const ttl = renewTTL
	g, _ := newGuard(t, idempotency.WithLeaseTTL(ttl))
	outlivesClient(t, g, ttl, "k")
}

// Item 1, workers: the caller's cancellation must not end renewal.
func TestDoCallerCancelledWorkOutlivesLease(t *testing.T) {
	const ttl = renewTTL
	g, _ := newGuard(t, idempotency.WithLeaseTTL(ttl))
	workOutlivesCaller(t, g, ttl, "k")
}

// flakyStore hands out leases whose every Refresh fails with a transient
// error, while the server (memlock, with an hour's TTL) still holds them:
// the keep-alive loses the lease by its local deadline only.
type flakyStore struct {
	*memlock.Locker
}

// flakyLease hides memlock's Deadline, so the Guard counts the deadline
// from its own lease TTL.
type flakyLease struct{ lock.Lease }

func (l flakyLease) Refresh(context.Context, time.Duration) error { return errDown }

// ClaimFingerprint goes through Claim: memlock's own would bypass it.
func (s flakyStore) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, _ []byte) (lock.Lease, []byte, []byte, error) {
	le, rec, err := s.Claim(ctx, key, ttl)
	return le, rec, nil, err
}

func (s flakyStore) Claim(ctx context.Context, key string, _ time.Duration) (lock.Lease, []byte, error) {
	le, rec, err := s.Locker.Claim(ctx, key, time.Hour)
	if le != nil {
		le = flakyLease{le}
	}
	return le, rec, err
}

func (s flakyStore) Complete(ctx context.Context, le lock.Lease, rec []byte, ret time.Duration) error {
	if fl, ok := le.(flakyLease); ok {
		le = fl.Lease
	}
	return s.Locker.Complete(ctx, le, rec, ret)
}

// Issue 13 item 5: a lease lost only by the local deadline may still be
// held by the server, so the guard releases it.
func TestDeadlineLossReleases(t *testing.T) {
	store := flakyStore{memlock.New()}
	g, err := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }),
		idempotency.WithLeaseTTL(60*time.Millisecond), idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	var cause error
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // no refresh succeeds: lost at the deadline
		cause = context.Cause(r.Context())
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	send(m, req{key: "k"})
	if !errors.Is(cause, lock.ErrLeaseLost) {
		t.Fatalf("handler context cause %v, want ErrLeaseLost", cause)
	}
	if n := store.Len(); n != 0 {
		t.Fatalf("HTTP: %d keys still held after a deadline loss; want the lease released", n)
	}
	_, err = idempotency.Do(context.Background(), g, "w", func(ctx context.Context) (int, error) {
		<-ctx.Done()
		return 0, context.Cause(ctx)
	})
	if !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("Do: %v, want fn's ErrLeaseLost", err)
	}
	if n := store.Len(); n != 0 {
		t.Fatalf("Do: %d keys still held after a deadline loss; want the lease released", n)
	}
}

// failingSub is a subscription whose Wait fails, as a redislock
// re-subscribe, a Consul blocking query or a closed etcd client does.
type failingSub struct{ closed atomic.Int64 }

func (s *failingSub) Wait(context.Context, *lock.NotAcquiredError) error {
	return errors.New("re-subscribe failed")
}
func (s *failingSub) Close() error { s.closed.Add(1); return nil }

type failingSubStore struct {
	*memlock.Locker
	sub        *failingSub
	subscribed chan struct{}
}

func (s *failingSubStore) Subscribe(context.Context, string) (lock.Subscription, error) {
	s.subscribed <- struct{}{}
	return s.sub, nil
}

// Item 2: a failed subscription Wait falls back to polling; no panic, no
// leaked lease, and the duplicate gets a proper answer.
func TestWaitSubscriptionFails(t *testing.T) {
	store := &failingSubStore{Locker: memlock.New(), sub: &failingSub{}, subscribed: make(chan struct{}, 1)}
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }), idempotency.WithWait(10*time.Second))
	h := newBlocking()
	m := g.Middleware(h)
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- send(m, req{key: "k"}) }()
	<-h.started
	second := make(chan *httptest.ResponseRecorder)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				t.Errorf("the waiting duplicate panicked: %v", p)
				second <- nil
			}
		}()
		second <- send(m, req{key: "k"})
	}()
	<-store.subscribed
	close(h.proceed)
	<-first
	w := <-second
	if w == nil {
		t.FailNow()
	}
	if w.Code != http.StatusCreated || w.Header().Get(idempotency.ReplayedHeader) != "true" {
		t.Fatalf("duplicate after a failed subscription: %d %q, want the replay", w.Code, w.Body)
	}
	if store.Len() != 0 || h.runs.Load() != 1 || store.sub.closed.Load() == 0 {
		t.Fatalf("%d keys held, %d runs, subscription closed %d times", store.Len(), h.runs.Load(), store.sub.closed.Load())
	}
}

// Item 3: a request whose context ends before it was processed gets 503
// with Retry-After, never an empty 200.
func TestRequestEndedNeverEmpty200(t *testing.T) {
	g, _ := newGuard(t, idempotency.WithWait(10*time.Second))
	h := newBlocking()
	m := g.Middleware(h)
	check := func(name string, w *httptest.ResponseRecorder) {
		t.Helper()
		if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" ||
			w.Header().Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: %d %v %q, want a 503 problem with Retry-After", name, w.Code, w.Header(), w.Body)
		}
	}
	// The context ended before the claim.
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	check("context ended before the claim", send(m, req{key: "a", ctx: ended}))

	// A wait longer than the request's budget (a server deadline).
	first := make(chan struct{})
	go func() { send(m, req{key: "b"}); close(first) }()
	<-h.started
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	check("deadline during WithWait", send(m, req{key: "b", ctx: short}))
	close(h.proceed)
	<-first

	// The body cannot be read because the client left.
	gone, cancel3 := context.WithCancel(context.Background())
	r := httptest.NewRequest(http.MethodPost, "/orders", &failAfterCancel{cancel: cancel3})
	r = r.WithContext(gone)
	r.Header.Set("Idempotency-Key", "c")
	rw := httptest.NewRecorder()
	m.ServeHTTP(rw, r)
	check("client left while sending the body", rw)
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1 (only the first request)", n)
	}
}

// failAfterCancel is a request body whose client leaves mid-body.
type failAfterCancel struct{ cancel context.CancelFunc }

func (b *failAfterCancel) Read([]byte) (int, error) {
	b.cancel()
	return 0, errors.New("connection reset by peer")
}

// Item 4: a panic after a complete storable response stores it; the panic
// continues to net/http.
func TestPanicAfterResponseStores(t *testing.T) {
	for _, value := range []any{"boom", http.ErrAbortHandler} {
		g, _ := newGuard(t)
		runs := 0
		m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			runs++
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, "charged")
			panic(value) // a deferred clean-up failed after the answer
		}))
		func() {
			defer func() {
				if r := recover(); r != value {
					t.Fatalf("panic %v did not continue out of the middleware (got %v)", value, r)
				}
			}()
			send(m, req{key: "k"})
		}()
		w := send(m, req{key: "k"})
		if w.Code != http.StatusCreated || w.Body.String() != "charged" || w.Header().Get(idempotency.ReplayedHeader) != "true" || runs != 1 {
			t.Fatalf("retry after panic %v following a 201: %d %q, %d runs; want the stored 201 and one run", value, w.Code, w.Body, runs)
		}
	}
}

// Item 5: with WithScope set, an empty scope fails closed: nothing runs,
// nothing is replayed across anonymous callers, and a warning is logged.
func TestEmptyScopeFailsClosed(t *testing.T) {
	var logged bytes.Buffer
	g, err := idempotency.New(memlock.New(),
		idempotency.WithScope(func(r *http.Request) string { return r.Header.Get("X-User") }),
		idempotency.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
	if err != nil {
		t.Fatal(err)
	}
	h := &counter{}
	m := g.Middleware(h)
	for i := range 3 {
		w := send(m, req{key: "k", body: "anonymous order"})
		if w.Code < 400 || w.Header().Get(idempotency.ReplayedHeader) != "" {
			t.Fatalf("anonymous request %d: %d %q, want a problem, never a run or a replay", i, w.Code, w.Body)
		}
	}
	if n := h.runs.Load(); n != 0 {
		t.Fatalf("the handler ran %d times for requests without a scope", n)
	}
	if !strings.Contains(logged.String(), "empty scope") || strings.Count(logged.String(), "empty scope") != 1 {
		t.Fatalf("log %q: want one warning about the empty scope", logged.String())
	}
	if w := send(m, req{key: "k", user: "alice"}); w.Code != http.StatusCreated || h.runs.Load() != 1 {
		t.Fatalf("an authenticated request after the refusals: %d", w.Code)
	}
}

// downOnceStore fails the first Complete without applying it (a timeout
// before the request reached the server), or, with applied, after
// applying it (the reply was lost).
type downOnceStore struct {
	*memlock.Locker
	applied bool
	failed  atomic.Bool
}

func (s *downOnceStore) Complete(ctx context.Context, le lock.Lease, rec []byte, ret time.Duration) error {
	if s.failed.CompareAndSwap(false, true) {
		if s.applied {
			if err := s.Locker.Complete(ctx, le, rec, ret); err != nil {
				return err
			}
		}
		return errDown
	}
	return s.Locker.Complete(ctx, le, rec, ret)
}

// Item 6: a transient Complete error is retried; it never becomes a
// tombstone, and an applied Complete whose reply was lost is success.
func TestTransientCompleteRetried(t *testing.T) {
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprint("applied=", applied), func(t *testing.T) {
			store := &downOnceStore{Locker: memlock.New(), applied: applied}
			g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }),
				idempotency.WithLogger(slog.New(slog.DiscardHandler)))
			h := &counter{}
			m := g.Middleware(h)
			first := send(m, req{key: "k"})
			w := send(m, req{key: "k"})
			if w.Code != http.StatusCreated || w.Body.String() != first.Body.String() || h.runs.Load() != 1 {
				t.Fatalf("retry after a transient Complete error: %d %q, %d runs; want the stored 201", w.Code, w.Body, h.runs.Load())
			}
			store.failed.Store(false)
			v, err := idempotency.Do(context.Background(), g, "w", func(context.Context) (int, error) { return 7, nil })
			if err != nil || v != 7 {
				t.Fatalf("Do with a transient Complete error: %v, %v; want the result stored", v, err)
			}
			if v, err := idempotency.Do(context.Background(), g, "w", func(context.Context) (int, error) { return 8, nil }); err != nil || v != 7 {
				t.Fatalf("Do's duplicate: %v, %v; want the stored 7", v, err)
			}
		})
	}
}

// Item 7: the body handed to the handler is never recycled, even if a
// goroutine of the handler reads it after the middleware returned.
func TestBodyNotRecycled(t *testing.T) {
	g, _ := newGuard(t)
	var kept []io.Reader
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Idempotency-Key"), "late-") {
			kept = append(kept, r.Body) // read later, by "another goroutine"
		} else {
			_, _ = io.Copy(io.Discard, r.Body)
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	for i := range 20 {
		mine := "alice's card 4242-" + strconv.Itoa(i)
		send(m, req{key: "late-" + strconv.Itoa(i), body: mine})
		send(m, req{key: "other-" + strconv.Itoa(i), body: strings.Repeat("bob's card 5555 ", 3)})
		b, _ := io.ReadAll(kept[i])
		if string(b) != mine {
			t.Fatalf("round %d: a late read of the body got %q, want %q", i, b, mine)
		}
	}
}

// Item 8: what a record cannot replay is refused at store time: 300 Link
// lines leave a tombstone, never a stored response that fails every retry.
func TestTooManyHeaderLinesNotStoredBroken(t *testing.T) {
	g, _ := newGuard(t, idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	runs := 0
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		for i := range 300 {
			w.Header().Add("Link", fmt.Sprintf("</p/%d>; rel=item", i))
		}
		w.WriteHeader(http.StatusCreated)
	}))
	if w := send(m, req{key: "k"}); w.Code != http.StatusCreated || len(w.Header()["Link"]) != 300 {
		t.Fatalf("first: %d, %d Link lines", w.Code, len(w.Header()["Link"]))
	}
	p := problem(t, send(m, req{key: "k"}), http.StatusUnprocessableEntity, idempotency.ProblemNotReplayable)
	if !strings.Contains(p.Detail, "header lines") || runs != 1 {
		t.Fatalf("retry: %q, %d runs", p.Detail, runs)
	}
}

// Item 9: non-canonical header names set through the map are replayed.
func TestReplayNonCanonicalHeaderNames(t *testing.T) {
	g, _ := newGuard(t)
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["ETag"] = []string{`"v1"`}
		w.Header()["content-type"] = []string{"application/json"}
		w.WriteHeader(http.StatusCreated)
	}))
	send(m, req{key: "k"})
	w := send(m, req{key: "k"})
	if w.Header().Get("Etag") != `"v1"` || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("replayed headers %v, want ETag and Content-Type", w.Header())
	}
}

// Item 9: the replay carries the Content-Length of the original, not a
// chunked body.
func TestReplayContentLength(t *testing.T) {
	g, _ := newGuard(t)
	body := strings.Repeat("receipt ", 2048) // past net/http's buffer: no automatic length
	srv := httptest.NewServer(g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, body)
	})))
	defer srv.Close()
	get := func() *http.Response {
		resp, b := post(t, srv, "k")
		if b != body {
			t.Fatalf("body of %d bytes, want %d", len(b), len(body))
		}
		return resp
	}
	first := get()
	replay := get()
	if replay.Header.Get(idempotency.ReplayedHeader) != "true" || replay.ContentLength != first.ContentLength || len(replay.TransferEncoding) != 0 {
		t.Fatalf("replay: Content-Length %d (original %d), Transfer-Encoding %v", replay.ContentLength, first.ContentLength, replay.TransferEncoding)
	}
}

// Item 9: trailers are not stored, so a response with trailers is not
// replayed without them.
func TestTrailersNotReplayedWithout(t *testing.T) {
	g, _ := newGuard(t)
	runs := 0
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.Header().Set("Trailer", "X-Checksum")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "data")
		w.Header().Set("X-Checksum", "abc")
	}))
	send(m, req{key: "k"})
	p := problem(t, send(m, req{key: "k"}), http.StatusUnprocessableEntity, idempotency.ProblemNotReplayable)
	if !strings.Contains(p.Detail, "trailers") || runs != 1 {
		t.Fatalf("retry of a response with trailers: %q, %d runs", p.Detail, runs)
	}
}

// Item 10: a Permanent error matches the same sentinels on replay as on
// the first run.
func TestDoPermanentErrorIsOnReplay(t *testing.T) {
	errDeclined := errors.New("card declined")
	errFraud := errors.New("fraud suspected")
	g, _ := newGuard(t)
	fn := func(context.Context) (int, error) {
		return 0, idempotency.Permanent(fmt.Errorf("charge 42: %w", errors.Join(errDeclined, errFraud)))
	}
	first, err1 := idempotency.Do(context.Background(), g, "k", fn)
	_, err2 := idempotency.Do(context.Background(), g, "k", fn)
	for _, target := range []error{errDeclined, errFraud} {
		if !errors.Is(err1, target) || !errors.Is(err2, target) {
			t.Errorf("errors.Is(%q): first run %v, replay %v; want both true", target, errors.Is(err1, target), errors.Is(err2, target))
		}
	}
	if err2 == nil || err2.Error() != err1.Error() || first != 0 {
		t.Errorf("replay %v, first %v", err2, err1)
	}
}

// Item 11, the documented order: http.TimeoutHandler outside the guard.
// Its 503 answers the client; the handler goes on under the lease, and
// the retry gets 409 until it is done, then its response.
func TestTimeoutHandlerOutsideGuard(t *testing.T) {
	const ttl = renewTTL
	g, _ := newGuard(t, idempotency.WithLeaseTTL(ttl))
	var runs atomic.Int64
	started, proceed := make(chan struct{}), make(chan struct{})
	inner := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) > 1 {
			w.WriteHeader(http.StatusCreated)
			return
		}
		close(started)
		<-proceed
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "done")
	}))
	firstDone := make(chan struct{})
	srv := httptest.NewServer(http.TimeoutHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner.ServeHTTP(w, r)
		if r.Header.Get("X-First") != "" {
			close(firstDone) // the first handler returned and its response was stored
		}
	}), 50*time.Millisecond, "timeout"))
	defer srv.Close()
	send := func(first bool) (int, string) {
		hdr := []string{}
		if first {
			hdr = []string{"X-First", "1"}
		}
		resp, body := post(t, srv, "k", hdr...)
		return resp.StatusCode, body
	}
	if code, _ := send(true); code != http.StatusServiceUnavailable {
		t.Fatalf("first: %d, want TimeoutHandler's 503", code)
	}
	<-started
	for start := time.Now(); time.Since(start) < 3*ttl; {
		if code, body := send(false); code != http.StatusConflict {
			t.Fatalf("retry while the handler still runs: %d %q, want 409", code, body)
		}
		time.Sleep(ttl / 10)
	}
	close(proceed)
	<-firstDone
	if code, body := send(false); code != http.StatusCreated || body != "done" || runs.Load() != 1 {
		t.Fatalf("retry after the handler finished: %d %q, %d runs", code, body, runs.Load())
	}
}

// Item 11, the wrong order is detected: the guard logs an error when it
// wraps an http.TimeoutHandler.
func TestTimeoutHandlerInsideGuardLogged(t *testing.T) {
	var logged bytes.Buffer
	g, _ := newGuard(t, idempotency.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
	g.Middleware(http.TimeoutHandler(&counter{}, time.Second, "timeout"))
	if !strings.Contains(logged.String(), "level=ERROR") || !strings.Contains(logged.String(), "TimeoutHandler") {
		t.Fatalf("log %q: want an error about the TimeoutHandler inside the guard", logged.String())
	}
}

// Item 12: RFC 8941 sf-string items with parameters are keys; the
// parameters are ignored.
func TestKeyWithParameters(t *testing.T) {
	g, _ := newGuard(t)
	h := &counter{}
	m := g.Middleware(h)
	send(m, req{key: "abc"})
	for _, v := range []string{`"abc";p=1`, `"abc";a`, `"abc"; b=?1;c="x;y";d=:YWJj:;e=-1.5;f=tok/x:y;g=*`} {
		if w := send(m, req{key: v}); w.Header().Get(idempotency.ReplayedHeader) != "true" {
			t.Errorf("key %s: %d %s, want the replay of key abc", v, w.Code, w.Body)
		}
	}
	for _, v := range []string{`"abc";`, `"abc";P=1`, `"abc";p=`, `"abc";p=1.2345`, `"abc", "d"`, `"abc";p=1,q`, `"abc"x`, `"abc";p="x`, `"abc";p=:YW`, `"abc";p=?2`, `"abc";1p`} {
		problem(t, send(m, req{key: v}), http.StatusBadRequest, idempotency.ProblemKeyInvalid)
	}
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
}
