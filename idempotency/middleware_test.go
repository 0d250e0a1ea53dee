package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

func TestFirstRequestThenReplay(t *testing.T) {
	g, _ := newGuard(t)
	h := &counter{}
	m := g.Middleware(h)
	first := send(m, req{key: "k1", body: "a"})
	if first.Code != http.StatusCreated || first.Header().Get(idempotency.ReplayedHeader) != "" {
		t.Fatalf("first: %d %v", first.Code, first.Header())
	}
	for i := range 3 {
		again := send(m, req{key: "k1", body: "a"})
		if again.Code != http.StatusCreated {
			t.Fatalf("replay %d: status %d, want 201", i, again.Code)
		}
		if again.Body.String() != first.Body.String() {
			t.Errorf("replay body %q, want %q", again.Body, first.Body)
		}
		hd := again.Header()
		if hd.Get(idempotency.ReplayedHeader) != "true" {
			t.Errorf("replay lacks %s: true", idempotency.ReplayedHeader)
		}
		if hd.Get("Location") != "/orders/1" || hd.Get("Content-Type") != "application/json" {
			t.Errorf("allow-listed headers not replayed: %v", hd)
		}
		for _, never := range []string{"Set-Cookie", "X-Private", "Date"} {
			if v := hd.Get(never); v != "" {
				t.Errorf("replay carries %s: %q", never, v)
			}
		}
	}
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

func TestMethods(t *testing.T) {
	g, _ := newGuard(t)
	for _, method := range []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"} {
		h := &counter{}
		m := g.Middleware(h)
		for range 2 {
			w := send(m, req{method: method, key: "k-" + method})
			if w.Header().Get(idempotency.ReplayedHeader) != "" {
				t.Errorf("%s was replayed", method)
			}
		}
		if n := h.runs.Load(); n != 2 {
			t.Errorf("%s with a key: handler ran %d times, want 2 (not guarded by default)", method, n)
		}
	}
	for _, method := range []string{"POST", "PATCH"} {
		h := &counter{}
		m := g.Middleware(h)
		send(m, req{method: method, key: "k-" + method})
		send(m, req{method: method, key: "k-" + method})
		if n := h.runs.Load(); n != 1 {
			t.Errorf("%s: handler ran %d times, want 1", method, n)
		}
	}
	gp, err := g.With(idempotency.WithMethods("POST", "PUT", "DELETE"))
	if err != nil {
		t.Fatal(err)
	}
	for _, method := range []string{"PUT", "DELETE"} {
		h := &counter{}
		m := gp.Middleware(h)
		send(m, req{method: method, key: "opt-" + method})
		send(m, req{method: method, key: "opt-" + method})
		if n := h.runs.Load(); n != 1 {
			t.Errorf("%s opted in: handler ran %d times, want 1", method, n)
		}
	}
	for _, safe := range []string{"GET", "head", "OPTIONS", "TRACE", "CONNECT"} {
		_, err := g.With(idempotency.WithMethods("POST", safe))
		var oe *idempotency.OptionError
		if !errors.Is(err, idempotency.ErrInvalidOption) || !errors.As(err, &oe) {
			t.Errorf("WithMethods(%s): %v, want an *OptionError", safe, err)
		}
	}
}

func TestMissingKey(t *testing.T) {
	g, _ := newGuard(t)
	h := &counter{}
	send(g.Middleware(h), req{noKey: true})
	send(g.Middleware(h), req{noKey: true})
	if n := h.runs.Load(); n != 2 {
		t.Fatalf("no key, default: handler ran %d times, want 2 (pass through)", n)
	}
	gr, _ := g.With(idempotency.RequireKey())
	w := send(gr.Middleware(h), req{noKey: true})
	problem(t, w, http.StatusBadRequest, idempotency.ProblemKeyMissing)
	if n := h.runs.Load(); n != 2 {
		t.Fatalf("missing key on a route that requires one ran the handler")
	}
	w = send(gr.Middleware(h), req{method: "GET", noKey: true})
	if w.Code != http.StatusCreated {
		t.Fatalf("GET without a key on a RequireKey route: %d, want the handler's 201", w.Code)
	}
}

func TestInvalidKeys(t *testing.T) {
	g, _ := newGuard(t)
	h := &counter{}
	m := g.Middleware(h)
	for _, tc := range []struct {
		name string
		keys []string
	}{
		{"empty", []string{""}},
		{"empty quoted", []string{`""`}},
		{"two header lines", []string{"a", "b"}},
		{"comma list", []string{"a,b"}},
		{"comma list with space", []string{"a, b"}},
		{"quoted list", []string{`"a", "b"`}},
		{"space", []string{"a b"}},
		{"control", []string{"a\x01b"}},
		{"tab", []string{"a\tb"}},
		{"non-ASCII", []string{"clé"}},
		{"DEL", []string{"a\x7f"}},
		{"256 bytes", []string{strings.Repeat("k", 256)}},
		{"256 bytes quoted", []string{`"` + strings.Repeat("k", 256) + `"`}},
		{"unterminated", []string{`"abc`}},
		{"bad escape", []string{`"a\nb"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			problem(t, send(m, req{keys: tc.keys}), http.StatusBadRequest, idempotency.ProblemKeyInvalid)
		})
	}
	if n := h.runs.Load(); n != 0 {
		t.Fatalf("handler ran %d times for invalid keys", n)
	}
	for _, ok := range []string{strings.Repeat("k", 255), "8e03978e-40d5-43e8-bc93-6894a57f9324", `"quoted key"`, `"esc\"aped"`, "~!#$%&'*+-.^_`|"} {
		if w := send(m, req{key: ok}); w.Code != http.StatusCreated {
			t.Errorf("valid key %q: %d %s", ok, w.Code, w.Body)
		}
	}
}

// A quoted key (the IETF draft's sf-string) and the bare token with the
// same content are the same key.
func TestQuotedKeyEqualsBare(t *testing.T) {
	g, _ := newGuard(t)
	h := &counter{}
	m := g.Middleware(h)
	send(m, req{key: "abc-123"})
	w := send(m, req{key: `"abc-123"`})
	if w.Header().Get(idempotency.ReplayedHeader) != "true" || h.runs.Load() != 1 {
		t.Fatalf("quoted form of a key was not the same key: %d runs", h.runs.Load())
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

func TestInFlightConflict(t *testing.T) {
	g, _ := newGuard(t)
	h := newBlocking()
	m := g.Middleware(h)
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- send(m, req{key: "k"}) }()
	<-h.started
	w := send(m, req{key: "k"})
	problem(t, w, http.StatusConflict, idempotency.ProblemInProgress)
	if ra := w.Header().Get("Retry-After"); ra != "10" {
		t.Errorf("Retry-After %q, want 10 (the holder's remaining lease time)", ra)
	}
	// A different body in flight is told apart at once: memlock keeps the
	// fingerprint with the lease (an idempotency.FingerprintClaimer). See
	// TestInFlightMismatchWithFingerprintStore.
	problem(t, send(m, req{key: "k", body: "other"}), http.StatusUnprocessableEntity, idempotency.ProblemKeyReused)
	close(h.proceed)
	if w := <-first; w.Code != http.StatusCreated {
		t.Fatalf("first: %d", w.Code)
	}
	if w := send(m, req{key: "k"}); w.Code != http.StatusCreated || w.Header().Get(idempotency.ReplayedHeader) != "true" {
		t.Fatalf("after completion: %d, replayed %q", w.Code, w.Header().Get(idempotency.ReplayedHeader))
	}
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
}

// WithRetryAfter is the delay when the Store cannot tell the holder's
// remaining time (see TestRetryAfterFromHoldersRemainingTime).
func TestRetryAfterOption(t *testing.T) {
	g, err := idempotency.New(blindStore{memlock.New()}, idempotency.WithScope(userScope), idempotency.WithRetryAfter(2500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	h := newBlocking()
	m := g.Middleware(h)
	done := make(chan struct{})
	go func() { send(m, req{key: "k"}); close(done) }()
	<-h.started
	if ra := send(m, req{key: "k"}).Header().Get("Retry-After"); ra != "3" {
		t.Errorf("Retry-After %q, want 3 (rounded up)", ra)
	}
	close(h.proceed)
	<-done
}

func testWait(t *testing.T, notifier bool) {
	ml := memlock.New()
	var store idempotency.Store = pollStore{ml}
	subscribed := make(chan struct{}, 10)
	if notifier {
		store = &spyStore{Locker: ml, subscribed: subscribed}
	}
	g, err := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }), idempotency.WithWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	h := newBlocking()
	m := g.Middleware(h)
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- send(m, req{key: "k"}) }()
	<-h.started
	second := make(chan *httptest.ResponseRecorder)
	go func() { second <- send(m, req{key: "k"}) }()
	if notifier {
		<-subscribed // the duplicate is waiting on the release event
	}
	close(h.proceed)
	if w := <-first; w.Code != http.StatusCreated {
		t.Fatalf("first: %d", w.Code)
	}
	w := <-second
	if w.Code != http.StatusCreated || w.Header().Get(idempotency.ReplayedHeader) != "true" || w.Body.String() != "done" {
		t.Fatalf("waiting duplicate: %d %v %q, want the replay", w.Code, w.Header(), w.Body)
	}
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
}

func TestWaitReplaysNotified(t *testing.T) { testWait(t, true) }
func TestWaitReplaysPolling(t *testing.T)  { testWait(t, false) }

func TestWaitBounded(t *testing.T) {
	g, _ := newGuard(t, idempotency.WithWait(50*time.Millisecond))
	h := newBlocking()
	m := g.Middleware(h)
	done := make(chan struct{})
	go func() { send(m, req{key: "k"}); close(done) }()
	<-h.started
	start := time.Now()
	problem(t, send(m, req{key: "k"}), http.StatusConflict, idempotency.ProblemInProgress)
	if d := time.Since(start); d < 50*time.Millisecond || d > 2*time.Second {
		t.Errorf("bounded wait of 50ms took %v", d)
	}
	close(h.proceed)
	<-done
}

// A waiting duplicate whose first request released the key runs the
// handler itself.
func TestWaitThenRuns(t *testing.T) {
	store := &spyStore{Locker: memlock.New(), subscribed: make(chan struct{}, 10)}
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }), idempotency.WithWait(10*time.Second))
	h := newBlocking()
	h.status = http.StatusServiceUnavailable
	m := g.Middleware(h)
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- send(m, req{key: "k"}) }()
	<-h.started
	second := make(chan *httptest.ResponseRecorder)
	go func() { second <- send(m, req{key: "k"}) }()
	<-store.subscribed
	h.proceed <- struct{}{} // the first fails with 503
	if w := <-first; w.Code != http.StatusServiceUnavailable {
		t.Fatalf("first: %d", w.Code)
	}
	<-h.started // the waiter took the key and runs
	h.status = http.StatusCreated
	close(h.proceed)
	if w := <-second; w.Code != http.StatusCreated || w.Header().Get(idempotency.ReplayedHeader) != "" {
		t.Fatalf("second: %d replayed=%q", w.Code, w.Header().Get(idempotency.ReplayedHeader))
	}
}

func TestFingerprintMismatch(t *testing.T) {
	g, _ := newGuard(t)
	h := &counter{}
	m := g.Middleware(h)
	send(m, req{key: "k", path: "/orders?x=1", body: "a"})
	for _, tc := range []req{
		{key: "k", path: "/orders?x=1", body: "b"},
		{key: "k", path: "/orders?x=2", body: "a"},
		{key: "k", path: "/orders", body: "a"},
		{key: "k", path: "/other?x=1", body: "a"},
		{key: "k", method: "PATCH", path: "/orders?x=1", body: "a"},
		{key: "k", path: "/orders?x=1", body: "a "},
	} {
		problem(t, send(m, tc), http.StatusUnprocessableEntity, idempotency.ProblemKeyReused)
	}
	if w := send(m, req{key: "k", path: "/orders?x=1", body: "a"}); w.Header().Get(idempotency.ReplayedHeader) != "true" {
		t.Fatalf("the original request no longer replays: %d", w.Code)
	}
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
}

// With ServeMux inside the middleware, r.Pattern is empty when the
// middleware runs; with the middleware inside the mux it is set, and the
// path still tells two resources of one pattern apart.
func TestRouteFromPattern(t *testing.T) {
	g, _ := newGuard(t)
	h := &counter{}
	mux := http.NewServeMux()
	mux.Handle("POST /orders/{id}/pay", g.Middleware(h))
	send(mux, req{key: "k", path: "/orders/1/pay"})
	problem(t, send(mux, req{key: "k", path: "/orders/2/pay"}), http.StatusUnprocessableEntity, idempotency.ProblemKeyReused)

	// A custom route ignores the order id: the same key on another order is
	// then the same request (the user chose that).
	gr, _ := g.With(idempotency.WithRoute(func(r *http.Request) string { return r.Pattern }))
	h2 := &counter{}
	mux2 := http.NewServeMux()
	mux2.Handle("POST /orders/{id}/pay", gr.Middleware(h2))
	send(mux2, req{key: "k2", path: "/orders/1/pay"})
	if w := send(mux2, req{key: "k2", path: "/orders/2/pay"}); w.Header().Get(idempotency.ReplayedHeader) != "true" {
		t.Fatalf("custom route: %d, want a replay", w.Code)
	}
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

func TestOutcomes(t *testing.T) {
	g, _ := newGuard(t)
	for _, tc := range []struct {
		status   int
		terminal bool
		stored   bool
	}{
		{200, false, true}, {201, false, true}, {202, false, true}, {204, false, true},
		{303, false, false}, {307, false, false}, {303, true, true},
		{400, false, false}, {404, false, false}, {409, false, false}, {422, false, false},
		{408, false, false}, {429, false, false},
		{500, false, false}, {502, false, false}, {503, false, false},
		{402, true, true}, {409, true, true},
	} {
		t.Run(fmt.Sprint(tc.status, "/terminal=", tc.terminal), func(t *testing.T) {
			h := &statusHandler{status: tc.status, terminal: tc.terminal}
			m := g.Middleware(h)
			key := fmt.Sprintf("k%d-%v", tc.status, tc.terminal)
			send(m, req{key: key})
			w := send(m, req{key: key})
			runs := h.runs.Load()
			if tc.stored {
				if runs != 1 || w.Code != tc.status || w.Header().Get(idempotency.ReplayedHeader) != "true" {
					t.Fatalf("stored outcome: %d runs, replay %d %v", runs, w.Code, w.Header())
				}
			} else if runs != 2 || w.Header().Get(idempotency.ReplayedHeader) != "" {
				t.Fatalf("released outcome: %d runs, want 2 (the retry runs)", runs)
			}
		})
	}
}

func TestClassifierOption(t *testing.T) {
	storeConflicts := func(status int, h http.Header) idempotency.Outcome {
		if status == http.StatusConflict || h.Get("X-Final") != "" {
			return idempotency.OutcomeStore
		}
		return idempotency.DefaultClassifier(status, h)
	}
	g, _ := newGuard(t, idempotency.WithClassifier(storeConflicts))
	h := &statusHandler{status: http.StatusConflict}
	send(g.Middleware(h), req{key: "k"})
	send(g.Middleware(h), req{key: "k"})
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("classifier storing 409: %d runs", n)
	}
	// And the other way: release every 2xx.
	gr, _ := g.With(idempotency.WithClassifier(func(int, http.Header) idempotency.Outcome { return idempotency.OutcomeRelease }))
	h2 := &counter{}
	send(gr.Middleware(h2), req{key: "k2"})
	send(gr.Middleware(h2), req{key: "k2"})
	if n := h2.runs.Load(); n != 2 {
		t.Fatalf("classifier releasing everything: %d runs", n)
	}
}

func TestSilentHandlerStoresImplicit200(t *testing.T) {
	g, _ := newGuard(t)
	runs := 0
	m := g.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { runs++ }))
	send(m, req{key: "k"})
	w := send(m, req{key: "k"})
	if runs != 1 || w.Code != 200 || w.Header().Get(idempotency.ReplayedHeader) != "true" {
		t.Fatalf("silent handler: %d runs, replay %d", runs, w.Code)
	}
}

func TestPanicReleases(t *testing.T) {
	for _, value := range []any{"boom", http.ErrAbortHandler} {
		g, store := newGuard(t)
		runs := 0
		m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			runs++
			if runs == 1 {
				panic(value)
			}
			w.WriteHeader(http.StatusCreated)
		}))
		func() {
			defer func() {
				if r := recover(); r != value {
					t.Fatalf("panic %v did not continue out of the middleware (got %v)", value, r)
				}
			}()
			send(m, req{key: "k"})
		}()
		if n := store.Len(); n != 0 {
			t.Fatalf("panic %v: %d keys still held", value, n)
		}
		if w := send(m, req{key: "k"}); w.Code != http.StatusCreated || runs != 2 {
			t.Fatalf("retry after panic %v: %d, %d runs", value, w.Code, runs)
		}
	}
}

func TestClientDisconnect(t *testing.T) {
	g, store := newGuard(t)
	ctx, cancel := context.WithCancel(context.Background())
	runs := 0
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		if runs == 1 {
			cancel() // the client goes away while the handler works
			<-r.Context().Done()
			return // and the handler gives up without a response
		}
		w.WriteHeader(http.StatusCreated)
	}))
	send(m, req{key: "k", ctx: ctx})
	if store.Len() != 0 || store.Records() != 0 {
		t.Fatalf("client disconnect: %d held, %d records; want the key released", store.Len(), store.Records())
	}
	if w := send(m, req{key: "k"}); w.Code != http.StatusCreated || runs != 2 {
		t.Fatalf("retry after disconnect: %d, %d runs", w.Code, runs)
	}

	// A handler that finished its work and wrote a 201 before noticing the
	// client left has done the side effect: that response is stored, so
	// the client's retry gets it instead of a second charge.
	ctx2, cancel2 := context.WithCancel(context.Background())
	runs2 := 0
	m2 := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs2++
		w.WriteHeader(http.StatusCreated)
		cancel2()
	}))
	send(m2, req{key: "k2", ctx: ctx2})
	if w := send(m2, req{key: "k2"}); w.Header().Get(idempotency.ReplayedHeader) != "true" || runs2 != 1 {
		t.Fatalf("completed response of a departed client: %d runs, replay %q", runs2, w.Header().Get(idempotency.ReplayedHeader))
	}
}

func TestScopeIsolation(t *testing.T) {
	g, _ := newGuard(t)
	h := &counter{}
	m := g.Middleware(h)
	alice := send(m, req{key: "shared", user: "alice", body: "alice's order"})
	bob := send(m, req{key: "shared", user: "bob", body: "alice's order"})
	if bob.Header().Get(idempotency.ReplayedHeader) != "" || h.runs.Load() != 2 {
		t.Fatalf("bob replayed alice's response: %q", bob.Body)
	}
	if strings.Contains(bob.Body.String(), `"run":1`) {
		t.Fatalf("bob got alice's body %q", bob.Body)
	}
	again := send(m, req{key: "shared", user: "alice", body: "alice's order"})
	if again.Body.String() != alice.Body.String() || again.Header().Get(idempotency.ReplayedHeader) != "true" {
		t.Fatalf("alice's own retry: %q", again.Body)
	}
}

func TestNamespaces(t *testing.T) {
	store := memlock.New()
	scope := idempotency.WithScope(func(*http.Request) string { return "all" })
	a, _ := idempotency.New(store, scope, idempotency.WithNamespace("a"))
	b, _ := idempotency.New(store, scope, idempotency.WithNamespace("b"))
	h := &counter{}
	send(a.Middleware(h), req{key: "k"})
	send(b.Middleware(h), req{key: "k"})
	if n := h.runs.Load(); n != 2 {
		t.Fatalf("two namespaces shared a key: %d runs", n)
	}
}

func TestStoreSeesOnlyHashes(t *testing.T) {
	store := &spyStore{Locker: memlock.New()}
	g, _ := idempotency.New(store, idempotency.WithScope(func(r *http.Request) string { return r.Header.Get("X-User") }))
	send(g.Middleware(&counter{}), req{key: "raw-key-42", user: "alice"})
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.keys) != 1 {
		t.Fatalf("%d claims", len(store.keys))
	}
	k := store.keys[0]
	if strings.Contains(k, "raw-key-42") || strings.Contains(k, "alice") {
		t.Fatalf("the Store saw the raw key or scope: %q", k)
	}
	if !strings.HasPrefix(k, "idem/") || len(k) != len("idem/")+64 || strings.Trim(k[5:], "0123456789abcdef") != "" {
		t.Fatalf("storage key %q is not idem/ + a hex SHA-256", k)
	}
}

func TestRequestBodyCap(t *testing.T) {
	g, _ := newGuard(t, idempotency.WithMaxRequestBody(10))
	echo := func(runs *int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			*runs++
			b, err := io.ReadAll(r.Body)
			if err != nil {
				t.Errorf("handler reading the body: %v", err)
			}
			_ = r.Body.Close()
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write(b)
		})
	}
	runs := 0
	m := g.Middleware(echo(&runs))
	w := send(m, req{key: "k", body: "0123456789"})
	if w.Code != http.StatusCreated || w.Body.String() != "0123456789" {
		t.Fatalf("body at the cap: %d %q, want the handler to get all of it", w.Code, w.Body)
	}
	problem(t, send(m, req{key: "k2", body: "0123456789A"}), http.StatusRequestEntityTooLarge, idempotency.ProblemBodyTooLarge)

	// Without a Content-Length (chunked), the cap is found by reading.
	r := httptest.NewRequest("POST", "/orders", io.MultiReader(strings.NewReader("0123456789"), strings.NewReader("AB")))
	r.ContentLength = -1
	r.Header.Set("Idempotency-Key", "k3")
	rw := httptest.NewRecorder()
	m.ServeHTTP(rw, r)
	problem(t, rw, http.StatusRequestEntityTooLarge, idempotency.ProblemBodyTooLarge)
	if runs != 1 {
		t.Fatalf("handler ran %d times, want 1 (oversized bodies never reach it)", runs)
	}
}

// Large bodies reach the handler whole through the buffer.
func TestRequestBodyWhole(t *testing.T) {
	g, _ := newGuard(t)
	body := strings.Repeat("0123456789", 50_000)
	var got string
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = string(b)
	}))
	send(m, req{key: "k", body: body})
	if got != body {
		t.Fatalf("handler got %d bytes, want %d", len(got), len(body))
	}
}

func TestResponseCapTombstone(t *testing.T) {
	g, _ := newGuard(t, idempotency.WithMaxResponseBody(100))
	runs := 0
	big := strings.Repeat("x", 101)
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, big[:50])
		_, _ = io.WriteString(w, big[50:])
	}))
	first := send(m, req{key: "k"})
	if first.Code != http.StatusCreated || first.Body.String() != big {
		t.Fatalf("the first caller must get the whole response: %d, %d bytes", first.Code, first.Body.Len())
	}
	p := problem(t, send(m, req{key: "k"}), http.StatusUnprocessableEntity, idempotency.ProblemNotReplayable)
	if !strings.Contains(p.Detail, "larger than the replay cap") {
		t.Errorf("detail %q does not say why", p.Detail)
	}
	if runs != 1 {
		t.Fatalf("handler ran %d times after an oversize response", runs)
	}
}

func TestStoreUnavailable(t *testing.T) {
	store := &spyStore{Locker: memlock.New()}
	store.setClaimErr(errDown)
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }))
	h := &counter{}
	w := send(g.Middleware(h), req{key: "k"})
	problem(t, w, http.StatusServiceUnavailable, idempotency.ProblemStoreUnavailable)
	if w.Header().Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After")
	}
	if h.runs.Load() != 0 {
		t.Fatalf("fail closed ran the handler")
	}
	open, _ := g.With(idempotency.FailOpen())
	if w := send(open.Middleware(h), req{key: "k"}); w.Code != http.StatusCreated || h.runs.Load() != 1 {
		t.Fatalf("fail open: %d, %d runs", w.Code, h.runs.Load())
	}
	// Store back: the guarded route works again.
	store.setClaimErr(nil)
	send(g.Middleware(h), req{key: "k"})
	send(g.Middleware(h), req{key: "k"})
	if n := h.runs.Load(); n != 2 {
		t.Fatalf("after recovery: %d runs", n)
	}
}

func TestTokenInRequestContext(t *testing.T) {
	g, _ := newGuard(t)
	var tokens []uint64
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := idempotency.TokenFromContext(r.Context())
		if !ok || tok == 0 {
			t.Errorf("no fencing token in the request context")
		}
		tokens = append(tokens, tok)
		w.WriteHeader(http.StatusInternalServerError) // released: retries run
	}))
	for range 3 {
		send(m, req{key: "k"})
	}
	if len(tokens) != 3 || !(tokens[0] < tokens[1] && tokens[1] < tokens[2]) {
		t.Fatalf("tokens %v, want strictly increasing", tokens)
	}
	if _, ok := idempotency.TokenFromContext(context.Background()); ok {
		t.Fatalf("a token outside a guarded call")
	}
}

func TestLeaseLostCancelsHandler(t *testing.T) {
	store := &losingStore{Locker: memlock.New(), lost: make(chan struct{})}
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }), idempotency.WithLeaseTTL(lostTTL))
	var cause error
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		cause = context.Cause(r.Context())
		// The newer owner claims and completes while this handler still
		// writes its answer.
		le, _, err := store.Locker.Claim(context.Background(), store.lastKey(), time.Minute)
		if err != nil {
			t.Errorf("newer owner's claim: %v", err)
			return
		}
		_ = store.Locker.Complete(context.Background(), le, []byte("newer owner's record"), time.Hour)
		w.WriteHeader(http.StatusCreated)
	}))
	send(m, req{key: "k"})
	if !errors.Is(cause, lock.ErrLeaseLost) {
		t.Fatalf("handler context cause %v, want ErrLeaseLost", cause)
	}
	_, rec, err := store.Locker.Claim(context.Background(), store.lastKey(), time.Minute)
	if err != nil || string(rec) != "newer owner's record" {
		t.Fatalf("the lost lease's completion overwrote the newer owner: %q, %v", rec, err)
	}
}

func TestConcurrentBurst(t *testing.T) {
	for _, wait := range []time.Duration{0, 10 * time.Second} {
		t.Run(fmt.Sprint("wait=", wait), func(t *testing.T) {
			g, _ := newGuard(t, idempotency.WithWait(wait))
			h := &counter{}
			m := g.Middleware(h)
			const n = 50
			var wg sync.WaitGroup
			codes := make([]int, n)
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					<-start
					codes[i] = send(m, req{key: "burst", body: "x"}).Code
				})
			}
			close(start)
			wg.Wait()
			if r := h.runs.Load(); r != 1 {
				t.Fatalf("a burst of %d ran the handler %d times", n, r)
			}
			for _, c := range codes {
				if c != http.StatusCreated && (wait > 0 || c != http.StatusConflict) {
					t.Fatalf("burst status %d (wait %v)", c, wait)
				}
			}
		})
	}
}

func TestReplayHeadersOption(t *testing.T) {
	g, _ := newGuard(t, idempotency.WithReplayHeaders("X-Order-Total"))
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Order-Total", "42")
		w.Header().Set("X-Other", "no")
		w.WriteHeader(http.StatusCreated)
	}))
	send(m, req{key: "k"})
	w := send(m, req{key: "k"})
	if w.Header().Get("X-Order-Total") != "42" || w.Header().Get("X-Other") != "" {
		t.Fatalf("replayed headers %v", w.Header())
	}
	for _, never := range []string{"Set-Cookie", "authorization", "Date", "Content-Length", "Transfer-Encoding", "Connection", "Trailer", "WWW-Authenticate", "Proxy-Authorization"} {
		if _, err := g.With(idempotency.WithReplayHeaders(never)); !errors.Is(err, idempotency.ErrInvalidOption) {
			t.Errorf("WithReplayHeaders(%s): %v, want ErrInvalidOption", never, err)
		}
		if !idempotency.NeverStored(never) {
			t.Errorf("NeverStored(%s) = false", never)
		}
	}
}

func TestOptionErrors(t *testing.T) {
	store := memlock.New()
	if _, err := idempotency.New(nil); !errors.Is(err, idempotency.ErrInvalidOption) {
		t.Errorf("New(nil): %v", err)
	}
	for name, opt := range map[string]idempotency.Option{
		"WithHeader":          idempotency.WithHeader("bad header"),
		"WithMethods":         idempotency.WithMethods(),
		"WithScope":           idempotency.WithScope(nil),
		"WithRoute":           idempotency.WithRoute(nil),
		"WithLeaseTTL":        idempotency.WithLeaseTTL(0),
		"WithRetention":       idempotency.WithRetention(-time.Second),
		"WithRetryAfter":      idempotency.WithRetryAfter(0),
		"WithWait":            idempotency.WithWait(-1),
		"WithMaxRequestBody":  idempotency.WithMaxRequestBody(-1),
		"WithMaxResponseBody": idempotency.WithMaxResponseBody(-1),
		"WithClassifier":      idempotency.WithClassifier(nil),
		"WithStoreTimeout":    idempotency.WithStoreTimeout(0),
		"WithLogger":          idempotency.WithLogger(nil),
	} {
		_, err := idempotency.New(store, opt)
		var oe *idempotency.OptionError
		if !errors.As(err, &oe) || oe.Option != name {
			t.Errorf("%s: %v, want an *OptionError naming it", name, err)
		}
	}
}

func TestCustomHeaderName(t *testing.T) {
	g, _ := newGuard(t, idempotency.WithHeader("x-request-id"))
	h := &counter{}
	m := g.Middleware(h)
	for range 2 {
		r := httptest.NewRequest("POST", "/orders", nil)
		r.Header.Set("X-Request-Id", "abc")
		m.ServeHTTP(httptest.NewRecorder(), r)
	}
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("custom header: %d runs", n)
	}
}

// Problems are never stored: after a 409 and a 400 the key still works.
func TestProblemsNotStored(t *testing.T) {
	g, store := newGuard(t)
	h := &counter{}
	m := g.Middleware(h)
	send(m, req{keys: []string{"a", "b"}})
	if store.Records() != 0 || store.Len() != 0 {
		t.Fatalf("a problem left state behind")
	}
	if w := send(m, req{key: "a"}); w.Code != http.StatusCreated {
		t.Fatalf("%d", w.Code)
	}
}

func TestStreamingNotStored(t *testing.T) {
	g, _ := newGuard(t)
	runs := 0
	mu := sync.Mutex{}
	srv := httptest.NewServer(g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		runs++
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "event 1\n")
		if _, ok := w.(http.Flusher); !ok {
			t.Errorf("the wrapper hides http.Flusher")
		}
		rc := http.NewResponseController(w)
		if err := rc.Flush(); err != nil {
			t.Errorf("ResponseController.Flush: %v", err)
		}
		if err := rc.SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("ResponseController.SetWriteDeadline through Unwrap: %v", err)
		}
		_, _ = io.WriteString(w, "event 2\n")
	})))
	defer srv.Close()
	resp, body := post(t, srv, "stream")
	if resp.StatusCode != 200 || body != "event 1\nevent 2\n" {
		t.Fatalf("stream: %d %q", resp.StatusCode, body)
	}
	resp, body = post(t, srv, "stream")
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(body, "ProblemNotReplayable") {
		t.Fatalf("retry of a streamed response: %d %q", resp.StatusCode, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if runs != 1 {
		t.Fatalf("streamed handler ran %d times", runs)
	}
}

func TestHijackNotStored(t *testing.T) {
	// The client reads the hijacked response before the handler returns and
	// the middleware stores its tombstone: the retry waits for that (an
	// event from the Store) instead of racing it and getting 409.
	g, _ := newGuard(t, idempotency.WithWait(10*time.Second))
	runs := 0
	mu := sync.Mutex{}
	srv := httptest.NewServer(g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		runs++
		mu.Unlock()
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("Hijack through the wrapper: %v", err)
			return
		}
		defer conn.Close()
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		_ = buf.Flush()
	})))
	defer srv.Close()
	if resp, body := post(t, srv, "hj"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("hijacked: %d %q", resp.StatusCode, body)
	}
	if resp, body := post(t, srv, "hj"); resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(body, "hijacked") {
		t.Fatalf("retry of a hijacked response: %d %q", resp.StatusCode, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if runs != 1 {
		t.Fatalf("hijacking handler ran %d times", runs)
	}
}

func TestMarkTerminalOutsideGuard(t *testing.T) {
	if idempotency.MarkTerminal(httptest.NewRecorder()) {
		t.Fatal("MarkTerminal on an unguarded writer reported true")
	}
}

// refusingStore refuses records over a size, keeping the lease, as a
// backend with an item limit does.
type refusingStore struct {
	*memlock.Locker
	limit int
}

func (s *refusingStore) Complete(ctx context.Context, le lock.Lease, rec []byte, ret time.Duration) error {
	if len(rec) > s.limit {
		return fmt.Errorf("%w: %d bytes, over the %d-byte limit", idempotency.ErrRecordTooLarge, len(rec), s.limit)
	}
	return s.Locker.Complete(ctx, le, rec, ret)
}

func TestStoreRefusesRecord(t *testing.T) {
	store := &refusingStore{Locker: memlock.New(), limit: 1000}
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }))
	runs := 0
	big := strings.Repeat("y", 2000)
	m := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, big)
	}))
	if w := send(m, req{key: "k"}); w.Body.String() != big {
		t.Fatalf("first caller got %d bytes", w.Body.Len())
	}
	p := problem(t, send(m, req{key: "k"}), http.StatusUnprocessableEntity, idempotency.ProblemNotReplayable)
	if !strings.Contains(p.Detail, "store could not hold") || runs != 1 {
		t.Fatalf("refused record: %q, %d runs", p.Detail, runs)
	}
	// Workers too: the result is tombstoned, fn never runs twice.
	wruns := 0
	fn := func(context.Context) (string, error) { wruns++; return big, nil }
	if v, err := idempotency.Do(context.Background(), g, "w", fn); err != nil || v != big {
		t.Fatalf("first Do: %v", err)
	}
	if _, err := idempotency.Do(context.Background(), g, "w", fn); !errors.Is(err, idempotency.ErrNotReplayable) || wruns != 1 {
		t.Fatalf("duplicate Do: %v, %d runs", err, wruns)
	}
}
