package idempotency_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
	_ "github.com/idemlock/lock/backends/consullock"
	_ "github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/faults"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// A small middleware and worker run on every real backend: the full
// contract is specified by conformance.RunStore (which each backend runs)
// and tested on memlock above; this proves the pieces fit on each server.

// backend opens a Store on a real server, counting its round trips when
// it can; tests get servers only through internal/testenv.
type backend struct {
	name string
	open func(t *testing.T, trips *atomic.Int64) idempotency.Store
}

// countHook counts commands sent to Redis.
type countHook struct{ n *atomic.Int64 }

func (h countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

func backends() []backend {
	return []backend{
		{"redis", func(t *testing.T, trips *atomic.Int64) idempotency.Store {
			c := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
			c.AddHook(countHook{trips})
			l, err := redislock.New(c)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close(); _ = c.Close() })
			return l
		}},
		{"redis-cluster", func(t *testing.T, trips *atomic.Int64) idempotency.Store {
			c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: testenv.RedisClusterAddrs(t)})
			l, err := redislock.New(c)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close(); _ = c.Close() })
			return l
		}},
		{"etcd", func(t *testing.T, trips *atomic.Int64) idempotency.Store {
			return openURL(t, "etcd://"+hostPort(testenv.EtcdEndpoints(t)[0]))
		}},
		{"consul", func(t *testing.T, trips *atomic.Int64) idempotency.Store {
			// The test agent runs with session_ttl_min = "1s".
			return openURL(t, "consul://"+testenv.ConsulAddr(t)+"?min_ttl=1s")
		}},
		{"memcached", func(t *testing.T, trips *atomic.Int64) idempotency.Store {
			c := memcache.New(testenv.MemcachedAddr(t))
			l, err := memcachedlock.New(c)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close(); _ = c.Close() })
			return l
		}},
	}
}

// testLogger sends the Guard's log to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// openURL opens a backend with lock.Open, as the examples do.
func openURL(t *testing.T, url string) idempotency.Store {
	t.Helper()
	b, err := lock.Open(context.Background(), url)
	if err != nil {
		t.Fatalf("lock.Open(%s): %v", url, err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b // a lock.Backend is a Store: no assertion
}

// hostPort drops a scheme from an endpoint such as http://127.0.0.1:2379.
func hostPort(endpoint string) string {
	if _, rest, ok := strings.Cut(endpoint, "://"); ok {
		return rest
	}
	return endpoint
}

func runID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func TestMiddlewareOnBackends(t *testing.T) {
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			var trips atomic.Int64
			store := be.open(t, &trips)
			// Keys are unique per run: the servers are shared and keep
			// records for their retention.
			id := runID()
			g, err := idempotency.New(store,
				idempotency.WithScope(userScope),
				idempotency.WithNamespace("idempotency-test/"+id),
				idempotency.WithRetention(time.Minute),
				idempotency.WithLogger(testLogger(t)))
			if err != nil {
				t.Fatal(err)
			}
			storyOn(t, g)
			workerOn(t, g)
			waitOn(t, g)
		})
	}
}

// TestWorkOutlivesClientOnBackends is item 1 of the failure-edges issue on
// every real server: a client that gives up (and a worker's caller that
// cancels) while the work runs for several lease TTLs must not end the
// lease's renewal, or a duplicate runs the work a second time. TTLs are
// short but safe on a loaded machine: a second on Redis, two on the
// servers that count whole seconds (etcd grants at least about 2 s).
func TestWorkOutlivesClientOnBackends(t *testing.T) {
	ttls := map[string]time.Duration{"redis": time.Second, "redis-cluster": time.Second,
		"etcd": 2 * time.Second, "consul": 2 * time.Second, "memcached": 2 * time.Second}
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			t.Parallel()
			ttl := ttls[be.name]
			var trips atomic.Int64
			store := be.open(t, &trips)
			g, err := idempotency.New(store, idempotency.WithScope(userScope),
				idempotency.WithNamespace("outlives/"+runID()), idempotency.WithLeaseTTL(ttl),
				idempotency.WithRetention(time.Minute), idempotency.WithLogger(testLogger(t)))
			if err != nil {
				t.Fatal(err)
			}
			outlivesClient(t, g, ttl, "http")
			workOutlivesCaller(t, g, ttl, "worker")
		})
	}
}

// storyOn runs the checkout story's requests through g.
func storyOn(t *testing.T, g *idempotency.Guard) {
	t.Helper()
	h := &counter{}
	m := g.Middleware(h)
	first := send(m, req{key: "k1", body: "cart", user: "u"})
	if first.Code != http.StatusCreated {
		t.Fatalf("first: %d %s", first.Code, first.Body)
	}
	replay := send(m, req{key: "k1", body: "cart", user: "u"})
	if replay.Code != http.StatusCreated || replay.Header().Get(idempotency.ReplayedHeader) != "true" ||
		replay.Body.String() != first.Body.String() || replay.Header().Get("Location") != "/orders/1" || replay.Header().Get("Set-Cookie") != "" {
		t.Fatalf("replay: %d %v %q", replay.Code, replay.Header(), replay.Body)
	}
	problem(t, send(m, req{key: "k1", body: "other cart", user: "u"}), http.StatusUnprocessableEntity, idempotency.ProblemKeyReused)
	if w := send(m, req{key: "k1", body: "cart", user: "someone else"}); w.Header().Get(idempotency.ReplayedHeader) != "" {
		t.Fatalf("another scope replayed the response")
	}
	if n := h.runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2 (once per scope)", n)
	}

	// In flight: 409.
	b := newBlocking()
	mb := g.Middleware(b)
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- send(mb, req{key: "k2", user: "u"}) }()
	<-b.started
	problem(t, send(mb, req{key: "k2", user: "u"}), http.StatusConflict, idempotency.ProblemInProgress)
	close(b.proceed)
	<-done

	// A failing charge releases the key; the retry runs and is stored.
	s := &statusHandler{status: http.StatusInternalServerError}
	ms := g.Middleware(s)
	send(ms, req{key: "k3", user: "u"})
	s.status = http.StatusCreated
	send(ms, req{key: "k3", user: "u"})
	if w := send(ms, req{key: "k3", user: "u"}); w.Header().Get(idempotency.ReplayedHeader) != "true" || s.runs.Load() != 2 {
		t.Fatalf("release then store: %d runs, replay %q", s.runs.Load(), w.Header().Get(idempotency.ReplayedHeader))
	}

	// A large response within the cap round-trips intact.
	big := strings.Repeat("0123456789abcdef", 4096) // 64 KiB
	mbig := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, big)
	}))
	send(mbig, req{key: "k4", user: "u"})
	if w := send(mbig, req{key: "k4", user: "u"}); w.Body.String() != big {
		t.Fatalf("64 KiB replay came back with %d bytes", w.Body.Len())
	}

	// A response at the middleware's cap (1 MiB) is over some backends'
	// record limits (memcached's item size, Consul's transaction size):
	// those stores refuse it and a tombstone is stored instead. Either
	// way the handler runs once.
	huge := strings.Repeat("z", idempotency.DefaultMaxResponseBody)
	hugeRuns := 0
	mhuge := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hugeRuns++
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, huge)
	}))
	if w := send(mhuge, req{key: "k5", user: "u"}); w.Body.Len() != len(huge) {
		t.Fatalf("the first caller got %d bytes of 1 MiB", w.Body.Len())
	}
	w := send(mhuge, req{key: "k5", user: "u"})
	switch {
	case hugeRuns != 1:
		t.Fatalf("1 MiB response: the handler ran %d times", hugeRuns)
	case w.Code == http.StatusOK && w.Body.Len() == len(huge):
		t.Logf("1 MiB response stored and replayed")
	default:
		p := problem(t, w, http.StatusUnprocessableEntity, idempotency.ProblemNotReplayable)
		t.Logf("1 MiB response refused by the store: %s", p.Detail)
	}
}

func workerOn(t *testing.T, g *idempotency.Guard) {
	t.Helper()
	ctx := context.Background()
	runs := 0
	fn := func(ctx context.Context) (receipt, error) {
		runs++
		if tok, ok := idempotency.TokenFromContext(ctx); !ok || tok == 0 {
			t.Errorf("no fencing token")
		}
		return receipt{ID: "r", Amount: 1}, nil
	}
	for range 2 {
		if v, err := idempotency.Do(ctx, g, "msg", fn); err != nil || v.ID != "r" {
			t.Fatalf("Do: %v %v", v, err)
		}
	}
	if runs != 1 {
		t.Fatalf("worker ran %d times", runs)
	}
	started, proceed := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := idempotency.Do(ctx, g, "msg2", func(context.Context) (int, error) { close(started); <-proceed; return 1, nil })
		done <- err
	}()
	<-started
	if _, err := idempotency.Do(ctx, g, "msg2", func(context.Context) (int, error) { return 2, nil }); !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("in flight: %v", err)
	}
	close(proceed)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func waitOn(t *testing.T, g *idempotency.Guard) {
	t.Helper()
	gw, err := g.With(idempotency.WithWait(20 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	b := newBlocking()
	m := gw.Middleware(b)
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- send(m, req{key: "w", user: "u"}) }()
	<-b.started
	second := make(chan *httptest.ResponseRecorder)
	go func() { second <- send(m, req{key: "w", user: "u"}) }()
	close(b.proceed)
	<-first
	if w := <-second; w.Code != http.StatusCreated || b.runs.Load() != 1 {
		t.Fatalf("waiting duplicate: %d, %d runs", w.Code, b.runs.Load())
	}
}

// TestRoundTripsRedis checks the speed goal: a first request costs Claim +
// Complete (2 round trips) and a replay one Claim.
func TestRoundTripsRedis(t *testing.T) {
	var trips atomic.Int64
	store := backends()[0].open(t, &trips)
	g, _ := idempotency.New(store, idempotency.WithNamespace("rt/"+runID()),
		idempotency.WithScope(func(*http.Request) string { return "all" }), idempotency.WithRetention(time.Minute))
	m := g.Middleware(&counter{})
	send(m, req{key: "warm-up"}) // the connection's handshake is not per request
	before := trips.Load()
	send(m, req{key: "k"})
	firstTrips := trips.Load() - before
	before = trips.Load()
	send(m, req{key: "k"})
	replayTrips := trips.Load() - before
	t.Logf("Redis round trips: first request %d, replay %d", firstTrips, replayTrips)
	if firstTrips > 3 || replayTrips != 1 {
		t.Fatalf("round trips: first %d (want at most 3, goal 2), replay %d (want 1)", firstTrips, replayTrips)
	}
}

// BenchmarkMiddlewareRedis reports round trips per request on Redis: the
// goal is 2 for a first request (Claim, Complete) and 1 for a replay.
func BenchmarkMiddlewareRedis(b *testing.B) {
	var trips atomic.Int64
	c := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(b)})
	c.AddHook(countHook{&trips})
	l, err := redislock.New(c)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = l.Close(); _ = c.Close() })
	g, err := idempotency.New(l, idempotency.WithNamespace("bench/"+runID()),
		idempotency.WithScope(func(*http.Request) string { return "all" }),
		idempotency.WithRetention(time.Minute), idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	h := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	}))
	serve := func(key string) {
		r := httptest.NewRequest(http.MethodPost, "/checkout", strings.NewReader(`{"cart":1}`))
		r.Header.Set("Idempotency-Key", key)
		h.ServeHTTP(&nopWriter{h: http.Header{}}, r)
	}
	serve("warm-up")
	b.Run("first", func(b *testing.B) {
		before := trips.Load()
		for i := range b.N {
			serve("first-" + strconv.Itoa(i))
		}
		b.ReportMetric(float64(trips.Load()-before)/float64(b.N), "roundtrips/op")
	})
	b.Run("replay", func(b *testing.B) {
		before := trips.Load()
		for range b.N {
			serve("warm-up")
		}
		b.ReportMetric(float64(trips.Load()-before)/float64(b.N), "roundtrips/op")
	})
}

// TestHungEtcdAnswers503 is issue 21.1 on a real server: an etcd that
// accepts connections and never answers (a black hole between client and
// server, on a private server) gets 503 naming the claim within the store
// timeout, not a wait until the request's own deadline; a worker gets a
// *StoreError for the claim.
func TestHungEtcdAnswers503(t *testing.T) {
	tp := faults.Start(t, testenv.Etcd)
	n := tp.Net(t)
	store := openURL(t, "etcd://"+hostPort(n.Addr(hostPort(tp.Addrs()[0]))))
	logged := new(syncBuffer)
	const timeout = time.Second
	g, err := idempotency.New(store, idempotency.WithScope(userScope), idempotency.WithStoreTimeout(timeout),
		idempotency.WithLogger(slog.New(slog.NewTextHandler(logged, nil))))
	if err != nil {
		t.Fatal(err)
	}
	h := &counter{}
	m := g.Middleware(h)
	if w := send(m, req{key: "before"}); w.Code != http.StatusCreated {
		t.Fatalf("before the fault: %d %s", w.Code, w.Body)
	}
	n.BlackHole(t, faults.Both)

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	p := problem(t, send(m, req{key: "during", ctx: ctx}), http.StatusServiceUnavailable, idempotency.ProblemStoreUnavailable)
	if ctx.Err() != nil {
		t.Errorf("answered only after the request's own deadline")
	}
	if !strings.Contains(p.Detail, "did not answer the claim within "+timeout.String()) {
		t.Errorf("detail %q does not name the claim and the timeout", p.Detail)
	}
	if l := logged.String(); !strings.Contains(l, "call=claim") {
		t.Errorf("log %q does not name the claim", l)
	}
	_, err = idempotency.Do(ctx, g, "job", func(context.Context) (int, error) { return 1, nil })
	var se *idempotency.StoreError
	if !errors.As(err, &se) || se.Call != "claim" || se.Timeout != timeout || ctx.Err() != nil {
		t.Errorf("Do = %v, want a *StoreError for the claim's timeout", err)
	}
	if h.runs.Load() != 1 {
		t.Errorf("the handler ran %d times, want once (before the fault)", h.runs.Load())
	}
}

// TestOnceOnBackends is issue 21.5 on every real server: three instances,
// each with its own client, call Once at the same time (twice), and the
// job runs once.
func TestOnceOnBackends(t *testing.T) {
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			ns := idempotency.WithNamespace("once/" + runID())
			var gs []*idempotency.Guard
			for range 3 {
				gs = append(gs, instances(t, be.open(t, new(atomic.Int64)), 1, ns)[0])
			}
			// An hour: a day's record outlives Consul's 24 h maximum
			// retention, which Once clamps to only where the backend
			// reports it (lock.TTLLimiter).
			if n := onceRace(t, gs, "hourly-report", time.Hour); n != 1 {
				t.Fatalf("fn ran %d times in one period over 3 instances, want once", n)
			}
		})
	}
}

// TestRetryAfterOnBackends is issue 21.7 on every real server: a
// duplicate in flight is told the holder's remaining lease time (here
// about 5 s), as the server reports it, not a fixed second; memcached,
// which cannot tell, keeps the configured delay.
func TestRetryAfterOnBackends(t *testing.T) {
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			store := be.open(t, new(atomic.Int64))
			g, err := idempotency.New(store, idempotency.WithScope(userScope), idempotency.WithNamespace("retry-after/"+runID()),
				idempotency.WithLeaseTTL(5*time.Second), idempotency.WithRetention(time.Minute), idempotency.WithLogger(testLogger(t)))
			if err != nil {
				t.Fatal(err)
			}
			b := newBlocking()
			m := g.Middleware(b)
			done := make(chan struct{})
			go func() { defer close(done); send(m, req{key: "k"}) }()
			<-b.started
			w := send(m, req{key: "k"})
			close(b.proceed)
			<-done
			problem(t, w, http.StatusConflict, idempotency.ProblemInProgress)
			ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
			switch {
			case be.name == "memcached":
				// memcached cannot read a key's remaining TTL: the
				// configured delay.
				if err != nil || ra != 1 {
					t.Errorf("Retry-After %q, want WithRetryAfter's 1 s", w.Header().Get("Retry-After"))
				}
			case err != nil || ra < 2 || ra > 7:
				// A server counting whole seconds may grant a little more
				// (etcd: 6 s for 5).
				t.Errorf("Retry-After %q, want the holder's remaining time, 2 to 7 s for a 5 s lease", w.Header().Get("Retry-After"))
			}
		})
	}
}
