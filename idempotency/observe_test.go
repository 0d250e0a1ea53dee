package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/observe"
)

// events keeps the idempotency events an observed Store reports.
type events struct {
	mu  sync.Mutex
	got []observe.Event
}

func (e *events) Observe(_ context.Context, ev observe.Event) {
	if ev.Kind != observe.KindIdempotency {
		return
	}
	e.mu.Lock()
	e.got = append(e.got, ev)
	e.mu.Unlock()
}

// last returns the latest event, failing if there is none.
func (e *events) last(t *testing.T) observe.Event {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.got) == 0 {
		t.Fatal("no idempotency event reported")
	}
	return e.got[len(e.got)-1]
}

func (e *events) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.got)
}

// failingClaims is a Store whose Claims fail, as a store that is down.
type failingClaims struct{ lock.Store }

func (failingClaims) Claim(context.Context, string, time.Duration) (lock.Lease, []byte, error) {
	return nil, nil, errors.New("store down")
}

// TestObservedMiddleware checks that every outcome of a guarded request is
// reported, with its status, class and no raw key.
func TestObservedMiddleware(t *testing.T) {
	ev := &events{}
	store := lock.ObserveStore(memlock.New(), ev)
	g, err := idempotency.New(store)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	mux := http.NewServeMux()
	mux.Handle("POST /pay", g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("X-Mode") {
		case "block":
			started <- struct{}{}
			<-release
		case "fail":
			w.WriteHeader(http.StatusBadGateway)
			return
		case "stream":
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			return
		}
		w.WriteHeader(http.StatusCreated)
	})))
	do := func(key, body, mode string) int {
		r := httptest.NewRequest(http.MethodPost, "/pay", strings.NewReader(body))
		r.Header.Set("Idempotency-Key", key)
		r.Header.Set("X-Mode", mode)
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		return w.Code
	}
	check := func(name string, status int, want observe.Outcome, wantStatus int) {
		t.Helper()
		e := ev.last(t)
		if e.Outcome != want || e.Status != wantStatus || status != wantStatus && wantStatus != 0 {
			t.Errorf("%s: reported %v with status %d (answered %d), want %v with %d", name, e.Outcome, e.Status, status, want, wantStatus)
		}
		if e.Class != "POST /pay" || e.Key != "" || e.Backend != "memlock" {
			t.Errorf("%s: class %q key %q backend %q, want the route, no key, memlock", name, e.Class, e.Key, e.Backend)
		}
	}

	check("first", do("secret-1", "a", ""), observe.FirstRun, http.StatusCreated)
	check("replay", do("secret-1", "a", ""), observe.Replay, http.StatusCreated)
	check("reused key", do("secret-1", "b", ""), observe.FingerprintMismatch, http.StatusUnprocessableEntity)
	check("5xx", do("secret-2", "a", "fail"), observe.ReleasedAfterError, http.StatusBadGateway)
	check("streamed", do("secret-3", "a", "stream"), observe.Tombstone, http.StatusOK)

	done := make(chan int)
	go func() { done <- do("secret-4", "a", "block") }()
	<-started
	check("in progress", do("secret-4", "a", ""), observe.InProgress, http.StatusConflict)
	check("in progress, other body", do("secret-4", "b", ""), observe.FingerprintMismatch, http.StatusUnprocessableEntity)
	close(release)
	if code := <-done; code != http.StatusCreated {
		t.Fatalf("blocked request answered %d", code)
	}

	down, err := idempotency.New(lock.ObserveStore(failingClaims{memlock.New()}, ev))
	if err != nil {
		t.Fatal(err)
	}
	h := down.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	r := httptest.NewRequest(http.MethodPost, "/pay", nil)
	r.Header.Set("Idempotency-Key", "secret-5")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	e := ev.last(t)
	if e.Outcome != observe.StoreError || e.Status != http.StatusServiceUnavailable || w.Code != http.StatusServiceUnavailable || e.Err == nil || e.Class != observe.DefaultClass {
		t.Errorf("store down: %+v (answered %d), want store_error with 503, its error, the default class", e, w.Code)
	}

	// Requests the Guard does not guard report nothing.
	n := ev.count()
	r = httptest.NewRequest(http.MethodGet, "/pay", nil)
	h.ServeHTTP(httptest.NewRecorder(), r)
	if ev.count() != n {
		t.Error("an unguarded request was reported")
	}
}

// TestObservedWorker checks the outcomes of the worker Do.
func TestObservedWorker(t *testing.T) {
	ctx := t.Context()
	ev := &events{}
	r, err := idempotency.NewRunner(lock.ObserveStore(memlock.New(), ev), idempotency.WithNamespace("billing"))
	if err != nil {
		t.Fatal(err)
	}
	ok := func(context.Context) (int, error) { return 1, nil }
	check := func(name string, want observe.Outcome) {
		t.Helper()
		if e := ev.last(t); e.Outcome != want || e.Class != "billing" {
			t.Errorf("%s: reported %v in class %q, want %v in billing", name, e.Outcome, e.Class, want)
		}
	}
	if _, err := idempotency.Do(ctx, r, "job-1", ok); err != nil {
		t.Fatal(err)
	}
	check("first", observe.FirstRun)
	if _, err := idempotency.Do(ctx, r, "job-1", ok); err != nil {
		t.Fatal(err)
	}
	check("replay", observe.Replay)
	if _, err := idempotency.Do(ctx, r, "job-2", func(context.Context) (int, error) { return 0, errors.New("try again") }); err == nil {
		t.Fatal("failing work returned no error")
	}
	check("failed", observe.ReleasedAfterError)
	if _, err := idempotency.Do(ctx, r, "job-3", func(context.Context) (func(), error) { return func() {}, nil }); err == nil {
		t.Fatal("a result that cannot be encoded returned no error")
	}
	check("unencodable", observe.Tombstone)

	inside := make(chan struct{})
	out := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		_, _ = idempotency.Do(ctx, r, "job-4", func(context.Context) (int, error) { close(inside); <-out; return 1, nil })
	}()
	<-inside
	if _, err := idempotency.Do(ctx, r, "job-4", ok); !errors.As(err, new(*idempotency.InProgressError)) {
		t.Fatalf("duplicate in progress: %v", err)
	}
	check("in progress", observe.InProgress)
	if _, err := idempotency.Do(ctx, r, "job-4", ok, idempotency.WithPayload([]byte("other"))); !errors.Is(err, idempotency.ErrKeyReused) {
		t.Fatalf("reused key in progress: %v", err)
	}
	check("reused", observe.FingerprintMismatch)
	close(out)
	<-finished
	check("the first, once it ran", observe.FirstRun)

	down, err := idempotency.NewRunner(lock.ObserveStore(failingClaims{memlock.New()}, ev), idempotency.WithNamespace("billing"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := idempotency.Do(ctx, down, "job-5", ok); err == nil {
		t.Fatal("Do on a store that is down returned no error")
	}
	check("store down", observe.StoreError)

	// A result the store refuses for its size is stored as a tombstone,
	// and reported as one.
	small, err := idempotency.NewRunner(lock.ObserveStore(tinyRecords{memlock.New()}, ev), idempotency.WithNamespace("billing"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := idempotency.Do(ctx, small, "job-6", func(context.Context) (string, error) { return strings.Repeat("x", 2*tinyRecord), nil }); err != nil {
		t.Fatal(err)
	}
	check("oversize", observe.Tombstone)

	// Once runs through Do: its first run and its replay are reported.
	for _, want := range []observe.Outcome{observe.FirstRun, observe.Replay} {
		if _, err := idempotency.Once(ctx, r, "nightly", time.Hour, func(context.Context, time.Time) error { return nil }); err != nil {
			t.Fatal(err)
		}
		check("Once", want)
	}
}

// tinyRecord is the record size tinyRecords refuses past.
const tinyRecord = 256

// tinyRecords refuses records over tinyRecord bytes, as memcached refuses
// items over its item size.
type tinyRecords struct{ lock.Store }

func (s tinyRecords) Complete(ctx context.Context, le lock.Lease, rec []byte, retention time.Duration) error {
	if len(rec) > tinyRecord {
		return fmt.Errorf("%d bytes: %w", len(rec), lock.ErrRecordTooLarge)
	}
	return s.Store.Complete(ctx, le, rec, retention)
}
