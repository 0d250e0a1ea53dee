package idempotency_test

// Failure-edge tests that use API added with the fixes (see edges_test.go
// for those that ran, and failed, on the code before).

import (
	"bytes"
	"compress/gzip"
	"context"
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

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
)

// Item 5: the refusal of an empty scope is a 403 problem of its own type.
func TestEmptyScopeProblem(t *testing.T) {
	g, err := idempotency.New(memlock.New(),
		idempotency.WithScope(func(r *http.Request) string { return r.Header.Get("X-User") }),
		idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	problem(t, send(g.Middleware(&counter{}), req{key: "k"}), http.StatusForbidden, idempotency.ProblemScopeMissing)
}

// Item 3: the 503 for a request that ended unprocessed has its own type.
func TestRequestEndedProblem(t *testing.T) {
	g, _ := newGuard(t)
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	w := send(g.Middleware(&counter{}), req{key: "k", ctx: ended})
	problem(t, w, http.StatusServiceUnavailable, idempotency.ProblemRequestEnded)
	if w.Header().Get("Retry-After") != "1" {
		t.Fatalf("Retry-After %q", w.Header().Get("Retry-After"))
	}
}

// fpStore is memlock with the optional FingerprintClaimer: the claim's
// fingerprint is kept with its lease (a test double of the capability,
// under one mutex with the claim).
type fpStore struct {
	*memlock.Locker
	mu  sync.Mutex
	fps map[string][]byte
}

func (s *fpStore) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (lock.Lease, []byte, []byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	le, rec, err := s.Locker.Claim(ctx, key, ttl)
	switch {
	case errors.Is(err, lock.ErrNotAcquired):
		return nil, nil, s.fps[key], err
	case le != nil:
		s.fps[key] = fp
	}
	return le, rec, nil, err
}

// Payment gap: a different request with the key of one in flight gets 422
// at once when the Store keeps the fingerprint with the lease; the same
// request still gets 409 (or waits).
func TestInFlightMismatchWithFingerprintStore(t *testing.T) {
	store := &fpStore{Locker: memlock.New(), fps: map[string][]byte{}}
	g, _ := idempotency.New(store, idempotency.WithScope(userScope), idempotency.WithWait(time.Hour))
	h := newBlocking()
	m := g.Middleware(h)
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- send(m, req{key: "k", body: "amount=10"}) }()
	<-h.started
	// Even with an hour's WithWait, the mismatch is answered at once.
	problem(t, send(m, req{key: "k", body: "amount=99"}), http.StatusUnprocessableEntity, idempotency.ProblemKeyReused)
	gn, _ := g.With(idempotency.WithWait(0))
	problem(t, send(gn.Middleware(h), req{key: "k", body: "amount=10"}), http.StatusConflict, idempotency.ProblemInProgress)
	close(h.proceed)
	<-first

	// Workers: a payload that differs from the one in flight.
	started, proceed := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := idempotency.Do(context.Background(), g, "msg", func(context.Context) (int, error) {
			close(started)
			<-proceed
			return 1, nil
		}, idempotency.WithPayload([]byte("a")))
		done <- err
	}()
	<-started
	_, err := idempotency.Do(context.Background(), g, "msg", func(context.Context) (int, error) { return 2, nil }, idempotency.WithPayload([]byte("b")))
	if !errors.Is(err, idempotency.ErrKeyReused) {
		t.Fatalf("different payload in flight: %v, want ErrKeyReused", err)
	}
	_, err = idempotency.Do(context.Background(), g, "msg", func(context.Context) (int, error) { return 2, nil }, idempotency.WithPayload([]byte("a")))
	if !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("same payload in flight: %v, want ErrInProgress", err)
	}
	close(proceed)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Payment gap: the problem type URIs are configurable.
func TestProblemTypesOption(t *testing.T) {
	g, _ := newGuard(t, idempotency.RequireKey(), idempotency.WithProblemTypes(func(p string) string {
		_, name, _ := strings.Cut(p, "#")
		return "https://api.example.com/errors/" + name
	}))
	w := send(g.Middleware(&counter{}), req{noKey: true})
	problem(t, w, http.StatusBadRequest, "https://api.example.com/errors/ProblemKeyMissing")
	if strings.Contains(w.Body.String(), "idemlock") {
		t.Fatalf("the problem still names the library: %s", w.Body)
	}
	blank, _ := g.With(idempotency.WithProblemTypes(func(string) string { return "" }))
	problem(t, send(blank.Middleware(&counter{}), req{noKey: true}), http.StatusBadRequest, "about:blank")
	if _, err := idempotency.New(memlock.New(), idempotency.WithProblemTypes(nil)); !errors.Is(err, idempotency.ErrInvalidOption) {
		t.Fatalf("nil function: %v", err)
	}
}

// Item 10: a lease lost while fn ran gives a typed error naming the cause.
func TestDoLeaseLostNamesCause(t *testing.T) {
	store := &losingStore{Locker: memlock.New(), lost: make(chan struct{})}
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }), idempotency.WithLeaseTTL(lostTTL))
	ctx, cancel := context.WithCancel(context.Background())
	v, err := idempotency.Do(ctx, g, "k", func(fctx context.Context) (string, error) {
		<-fctx.Done()
		cancel() // and the caller gives up too
		// A newer owner takes the key meanwhile.
		if _, _, err := store.Locker.Claim(context.Background(), store.lastKey(), time.Minute); err != nil {
			t.Errorf("newer owner: %v", err)
		}
		return "late", nil
	})
	var lost *idempotency.LeaseLostError
	if !errors.As(err, &lost) || lost.Key != "k" || v != "late" {
		t.Fatalf("Do: %q, %v; want the result and a *LeaseLostError", v, err)
	}
	for _, target := range []error{lock.ErrLeaseLost, lock.ErrNotHeld, context.Canceled} {
		if !errors.Is(err, target) {
			t.Errorf("errors.Is(err, %v) = false for %v", target, err)
		}
	}
	if !strings.Contains(err.Error(), "refresh") || !strings.Contains(err.Error(), "caller's context") {
		t.Errorf("error %q does not name the cause (a refresh found the lease gone; the caller had left)", err)
	}
}

// alwaysDownStore fails every Complete, as a store that went away after
// the claim.
type alwaysDownStore struct {
	*memlock.Locker
	completes atomic.Int64
}

func (s *alwaysDownStore) Complete(context.Context, lock.Lease, []byte, time.Duration) error {
	s.completes.Add(1)
	return errDown
}

// Item 6: a Complete that keeps failing is retried within the store
// timeout, then in the background for three lease TTLs while the key stays
// in progress; then the key is left to expire, never released for the work
// to run again. It never becomes a tombstone.
func TestCompleteFailureNeverTombstones(t *testing.T) {
	store := &alwaysDownStore{Locker: memlock.New()}
	var logged bytes.Buffer // read after Shutdown, which waits for its writers
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }),
		idempotency.WithStoreTimeout(100*time.Millisecond), idempotency.WithLeaseTTL(3*conformance.SchedulingSlack),
		idempotency.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
	h := &counter{}
	m := g.Middleware(h)
	send(m, req{key: "k"})
	if n := store.completes.Load(); n < 2 {
		t.Fatalf("Complete tried %d times, want retries within the store timeout", n)
	}
	if store.Len() != 1 {
		t.Fatalf("%d held right after the response; want the key kept in progress while the result is stored", store.Len())
	}
	if err := g.Shutdown(t.Context()); err != nil { // waits for the background attempts
		t.Fatal(err)
	}
	if store.Records() != 0 {
		t.Fatalf("%d records; want nothing stored", store.Records())
	}
	for _, want := range []string{"retried in the background", "storing the result failed for good", "did not succeed for 3 lease TTLs"} {
		if !strings.Contains(logged.String(), want) {
			t.Fatalf("log %q lacks %q", logged.String(), want)
		}
	}
	if strings.Contains(logged.String(), "releasing") {
		t.Fatalf("log %q: the key was released", logged.String())
	}
}

// downUntilStore fails every Complete until up is closed, as a store
// unreachable for longer than the store timeout when the work ends;
// refreshes go on succeeding or failing with it (failRefresh).
type downUntilStore struct {
	lock.Store  // a memlock.Locker, without its FingerprintClaimer
	up          chan struct{}
	failRefresh bool
	completes   atomic.Int64
	failed      chan struct{} // closed at the first failed Complete
	once        sync.Once
}

func newDownUntilStore(failRefresh bool) *downUntilStore {
	return &downUntilStore{Store: memlock.New(), up: make(chan struct{}), failRefresh: failRefresh, failed: make(chan struct{})}
}

func (s *downUntilStore) down() bool {
	select {
	case <-s.up:
		return false
	default:
		return true
	}
}

func (s *downUntilStore) Complete(ctx context.Context, le lock.Lease, rec []byte, retention time.Duration) error {
	s.completes.Add(1)
	if s.down() {
		s.once.Do(func() { close(s.failed) })
		return errDown
	}
	return s.Store.Complete(ctx, le.(downLease).Lease, rec, retention)
}

func (s *downUntilStore) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	le, rec, err := s.Store.Claim(ctx, key, ttl)
	if le != nil {
		le = downLease{le, s}
	}
	return le, rec, err
}

// downLease fails its refreshes while its store is down, if told to.
type downLease struct {
	lock.Lease
	s *downUntilStore
}

func (le downLease) Refresh(ctx context.Context, ttl time.Duration) error {
	if le.s.failRefresh && le.s.down() {
		return errDown
	}
	return le.Lease.Refresh(ctx, ttl)
}

func (le downLease) Deadline() time.Time { return le.Lease.(lock.Deadliner).Deadline() }

// Regression test (a known issue of RELIABILITY.md: a charge made twice
// under "server paused 7s"): the store is unreachable when the handler's
// work ends, for longer than the store timeout, then comes back within the
// lease TTL. The key must stay in progress meanwhile (a retry gets 409,
// the handler does not run again) and the response be stored when the
// store is back, so that the retry replays it. Before the fix the key was
// released after the store timeout and the retry ran the handler again.
func TestCompleteRetriedWhileStoreDown(t *testing.T) {
	for _, failRefresh := range []bool{false, true} {
		t.Run(fmt.Sprintf("refreshes fail too=%v", failRefresh), func(t *testing.T) {
			store := newDownUntilStore(failRefresh)
			opts := []idempotency.Option{idempotency.WithScope(userScope), idempotency.WithStoreTimeout(100 * time.Millisecond),
				idempotency.WithLeaseTTL(3 * time.Second), idempotency.WithLogger(slog.New(slog.DiscardHandler))}
			g, err := idempotency.New(store, opts...)
			if err != nil {
				t.Fatal(err)
			}
			h := &counter{}
			if w := send(g.Middleware(h), req{key: "k", body: "a"}); w.Code != http.StatusCreated {
				t.Fatalf("first request: %d", w.Code)
			}
			<-store.failed
			if w := send(g.Middleware(h), req{key: "k", body: "a"}); w.Code != http.StatusConflict {
				t.Fatalf("retry while the store is down: %d %s, want 409 (in progress)", w.Code, w.Body)
			}
			close(store.up)
			if err := g.Shutdown(t.Context()); err != nil { // waits until the response is stored
				t.Fatal(err)
			}
			g2, err := idempotency.New(store, opts...)
			if err != nil {
				t.Fatal(err)
			}
			w := send(g2.Middleware(h), req{key: "k", body: "a"})
			if w.Code != http.StatusCreated || w.Header().Get("Idempotent-Replayed") != "true" {
				t.Fatalf("retry after the store came back: %d %v, want the replayed 201", w.Code, w.Header())
			}
			if n := h.runs.Load(); n != 1 {
				t.Fatalf("the handler ran %d times, want 1", n)
			}
		})
	}
}

// The same for a worker: Do reports the store error, and a retry of the
// message while the result is still being stored does not run fn again;
// once it is stored the retry gets the result.
func TestDoCompleteRetriedWhileStoreDown(t *testing.T) {
	store := newDownUntilStore(false)
	opts := []idempotency.RunnerOption{idempotency.WithStoreTimeout(100 * time.Millisecond), idempotency.WithLeaseTTL(3 * time.Second),
		idempotency.WithLogger(slog.New(slog.DiscardHandler))}
	r, err := idempotency.NewRunner(store, opts...)
	if err != nil {
		t.Fatal(err)
	}
	runs := 0
	fn := func(context.Context) (int, error) { runs++; return 42, nil }
	v, err := idempotency.Do(t.Context(), r, "msg-1", fn)
	if v != 42 || !errors.Is(err, idempotency.ErrStore) || !strings.Contains(err.Error(), "background") {
		t.Fatalf("Do with the store down: %v, %v; want 42 and a store error saying the result is still being stored", v, err)
	}
	if _, err := idempotency.Do(t.Context(), r, "msg-1", fn); !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("retry while the store is down: %v, want ErrInProgress", err)
	}
	close(store.up)
	if err := r.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	r2, _ := idempotency.NewRunner(store, opts...)
	if v, err := idempotency.Do(t.Context(), r2, "msg-1", fn); v != 42 || err != nil || runs != 1 {
		t.Fatalf("retry after the store came back: %v, %v, %d runs; want 42 replayed, 1 run", v, err, runs)
	}
}

// Item 4 and 9: a handler that panics before writing the Content-Length it
// declared leaves a tombstone: its work was done, its response is not
// whole.
func TestPanicMidBodyTombstone(t *testing.T) {
	g, _ := newGuard(t)
	runs := 0
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "half")
		panic(http.ErrAbortHandler)
	}))
	func() {
		defer func() { _ = recover() }()
		send(m, req{key: "k"})
	}()
	p := problem(t, send(m, req{key: "k"}), http.StatusUnprocessableEntity, idempotency.ProblemNotReplayable)
	if !strings.Contains(p.Detail, "Content-Length") || runs != 1 {
		t.Fatalf("retry: %q, %d runs", p.Detail, runs)
	}
}

// Item 9, the decision on Content-Encoding: the stored body is replayed
// as stored, with its Content-Encoding, whatever the retry's
// Accept-Encoding (a retry is the same request). Compression belongs
// outside the guard, so that what is stored is the identity encoding.
func TestContentEncodingReplayedAsStored(t *testing.T) {
	g, _ := newGuard(t)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = io.WriteString(zw, "receipt")
	_ = zw.Close()
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Vary", "Accept-Encoding")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(gz.Bytes())
	}))
	send(m, req{key: "k"})
	w := send(m, req{key: "k"}) // no Accept-Encoding
	if w.Header().Get("Content-Encoding") != "gzip" || !bytes.Equal(w.Body.Bytes(), gz.Bytes()) {
		t.Fatalf("replay: %v, %d bytes", w.Header(), w.Body.Len())
	}
}
