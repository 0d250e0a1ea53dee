package idempotency_test

// Failure-edge tests that use API added with the fixes (see edges_test.go
// for those that ran, and failed, on the code before).

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
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
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }), idempotency.WithLeaseTTL(30*time.Millisecond))
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

// Item 6: a Complete that keeps failing is retried until the store
// timeout, then the key is released; it never becomes a tombstone.
func TestCompleteFailureNeverTombstones(t *testing.T) {
	store := &alwaysDownStore{Locker: memlock.New()}
	var logged bytes.Buffer
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }),
		idempotency.WithStoreTimeout(300*time.Millisecond), idempotency.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
	h := &counter{}
	m := g.Middleware(h)
	send(m, req{key: "k"})
	if n := store.completes.Load(); n < 2 {
		t.Fatalf("Complete tried %d times, want retries within the store timeout", n)
	}
	if store.Len() != 0 || store.Records() != 0 {
		t.Fatalf("%d held, %d records; want the key released and nothing stored", store.Len(), store.Records())
	}
	if !strings.Contains(logged.String(), "storing the response failed") {
		t.Fatalf("log %q", logged.String())
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
