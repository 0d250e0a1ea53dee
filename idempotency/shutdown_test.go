package idempotency_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

// Issue 21.8: Shutdown during traffic loses nothing. Requests and a
// worker in flight when it is called run to the end and are stored before
// it returns; a waiting duplicate and every later request get 503
// ProblemShuttingDown; every request is answered; no key is left claimed;
// no effect happens twice.
func TestShutdownDuringTraffic(t *testing.T) {
	store := memlock.New()
	g, err := idempotency.New(store, idempotency.WithScope(userScope), idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	gw, err := g.With(idempotency.WithWait(time.Minute)) // shares g's shutdown
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	effects := map[string]int{}
	slowStarted, release := make(chan struct{}, 10), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		mu.Lock()
		effects[key]++
		mu.Unlock()
		if strings.HasPrefix(key, "slow") {
			slowStarted <- struct{}{}
			<-release
		}
		w.WriteHeader(http.StatusCreated)
	})
	m, mw := g.Middleware(h), gw.Middleware(h)

	var answers sync.Map // key → []int (status codes)
	record := func(key string, w *httptest.ResponseRecorder, body string) int {
		code := w.Code
		if code == http.StatusServiceUnavailable {
			var p idempotency.Problem
			if err := json.Unmarshal([]byte(body), &p); err != nil || p.Type != idempotency.ProblemShuttingDown {
				t.Errorf("key %s: 503 %s, want only ProblemShuttingDown", key, body)
			}
		}
		v, _ := answers.LoadOrStore(key, new([]int))
		mu.Lock()
		*v.(*[]int) = append(*v.(*[]int), code)
		mu.Unlock()
		return code
	}
	var wg sync.WaitGroup
	// In flight at shutdown: three slow requests and a worker.
	for i := range 3 {
		wg.Go(func() {
			key := fmt.Sprintf("slow-%d", i)
			w := send(m, req{key: key})
			record(key, w, w.Body.String())
		})
	}
	workerStarted := make(chan struct{})
	var workerErr error
	wg.Go(func() {
		_, workerErr = idempotency.Do(t.Context(), g, "job", func(context.Context) (int, error) {
			close(workerStarted)
			<-release
			return 42, nil
		})
	})
	for range 3 {
		<-slowStarted
	}
	<-workerStarted
	// A duplicate of a slow request waits for it (WithWait).
	waiting := make(chan int)
	go func() {
		w := send(mw, req{key: "slow-0"})
		waiting <- record("slow-0", w, w.Body.String())
	}()
	// Traffic: fresh keys, each sent twice at once, until shut down.
	stopped := make(chan struct{})
	for c := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				key := fmt.Sprintf("t%d-%d", c, i)
				codes := make(chan int, 2)
				for range 2 {
					go func() { w := send(m, req{key: key}); codes <- record(key, w, w.Body.String()) }()
				}
				a, b := <-codes, <-codes
				if a == http.StatusServiceUnavailable || b == http.StatusServiceUnavailable {
					select {
					case <-stopped:
						return
					default:
					}
				}
			}
		})
	}

	short, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	err = g.Shutdown(short)
	cancel()
	close(stopped)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with work in flight = %v, want it to wait until its context ended", err)
	}
	if code := <-waiting; code != http.StatusServiceUnavailable {
		t.Errorf("waiting duplicate got %d, want 503 ProblemShuttingDown once shutdown began", code)
	}
	w := send(m, req{key: "after"})
	problem(t, w, http.StatusServiceUnavailable, idempotency.ProblemShuttingDown)
	if w.Header().Get("Retry-After") == "" {
		t.Errorf("503 after Shutdown without Retry-After")
	}
	if _, err := idempotency.Do(t.Context(), gw, "late", func(context.Context) (int, error) { return 1, nil }); !errors.Is(err, idempotency.ErrShutdown) {
		t.Errorf("Do after Shutdown = %v, want ErrShutdown", err)
	}

	close(release)
	if err := g.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	// Shutdown returned: everything in flight is stored, nothing held.
	if n := store.Len(); n != 0 {
		t.Errorf("%d keys still claimed after Shutdown returned", n)
	}
	wg.Wait()
	if workerErr != nil {
		t.Errorf("worker in flight at shutdown: %v", workerErr)
	}
	mu.Lock()
	defer mu.Unlock()
	ran := 0
	for key, n := range effects {
		if n != 1 {
			t.Errorf("key %s: effect ran %d times", key, n)
		}
		ran++
	}
	if recs := store.Records(); recs != ran+1 { // +1: the worker's
		t.Errorf("%d records stored, want %d (one per effect)", recs, ran+1)
	}
	answers.Range(func(k, v any) bool {
		for _, code := range *v.(*[]int) {
			switch code {
			case http.StatusCreated, http.StatusConflict, http.StatusServiceUnavailable:
			default:
				t.Errorf("key %s answered %d", k, code)
			}
		}
		if effects[k.(string)] == 0 && !onlyShutdown(*v.(*[]int)) {
			t.Errorf("key %s: no effect, but answers %v", k, *v.(*[]int))
		}
		return true
	})
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
}

// onlyShutdown reports whether every answer was a 503: a key whose effect
// never ran was never claimed (a 409 means its twin held the claim, and
// ran).
func onlyShutdown(codes []int) bool {
	for _, c := range codes {
		if c != http.StatusServiceUnavailable {
			return false
		}
	}
	return true
}

// Shutdown with nothing in flight returns at once, and again when called
// twice.
func TestShutdownIdle(t *testing.T) {
	g, _ := newGuard(t)
	for range 2 {
		if err := g.Shutdown(t.Context()); err != nil {
			t.Fatalf("Shutdown = %v", err)
		}
	}
	problem(t, send(g.Middleware(&counter{}), req{key: "k"}), http.StatusServiceUnavailable, idempotency.ProblemShuttingDown)
}
