package torture

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock/idempotency"
)

// IdemLoad is the idempotency part of a run: clients with retries,
// timeouts and disconnects send checkouts through the idempotency
// middleware on the run's backend, under the run's faults, and every
// charge is counted.
type IdemLoad struct {
	// Clients send at once, each working through keys of its own.
	Clients int
	// LeaseTTL is the Guard's in-progress lease (WithLeaseTTL; default
	// idempotency.DefaultLeaseTTL).
	LeaseTTL time.Duration
	// Work is how long the handler takes (jittered): half before the
	// charge, when it gives up if its context ends, and half after it,
	// when it cannot.
	Work time.Duration
	// Timeout bounds one attempt of a client; a fifth of the attempts use
	// a random shorter one, to leave in the middle of the handler.
	Timeout time.Duration
	// GiveUp bounds the time a client spends on one key.
	GiveUp time.Duration
}

func (l *IdemLoad) fill() {
	if l.Clients <= 0 {
		l.Clients = 8
	}
	if l.LeaseTTL <= 0 {
		l.LeaseTTL = idempotency.DefaultLeaseTTL
	}
	if l.Work <= 0 {
		l.Work = 20 * time.Millisecond
	}
	if l.Timeout <= 0 {
		l.Timeout = 2 * time.Second
	}
	if l.GiveUp <= 0 {
		l.GiveUp = 3*l.LeaseTTL + time.Minute
	}
}

// IdemKey is what happened to one idempotency key.
type IdemKey struct {
	Key      string
	Attempts int
	Got2xx   bool  // some attempt got a 2xx (first or replayed)
	Final    int   // the last status (0: a transport error or timeout)
	Runs     int   // times the handler started for it
	Effects  int   // charges the provider accepted
	Stale    int   // charges the provider refused as stale (a lower token)
	At       int64 // when the client began with the key (the run's clock)
	Charged  int64 // when the provider accepted its latest charge
}

// IdemResult is the history of the idempotency part of a run.
type IdemResult struct {
	Load     IdemLoad
	Keys     []IdemKey
	Statuses map[string]int // attempt outcomes: "201", "409", "client gave up", …
	Logged   map[string]int // the Guard's log lines by level and message
}

// provider is the payment provider behind the checkout handler: it counts
// the charges per key and refuses a charge with a lower fencing token than
// one it has seen for that key.
type provider struct {
	clock  *Clock
	mu     sync.Mutex
	keys   map[string]*IdemKey
	tokens map[string]uint64
}

func (p *provider) key(k string) *IdemKey {
	ik := p.keys[k]
	if ik == nil {
		ik = &IdemKey{Key: k}
		p.keys[k] = ik
	}
	return ik
}

func (p *provider) started(k string) {
	p.mu.Lock()
	p.key(k).Runs++
	p.mu.Unlock()
}

func (p *provider) charge(k string, token uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ik := p.key(k)
	if token < p.tokens[k] {
		ik.Stale++
		return false
	}
	p.tokens[k] = token
	ik.Effects++
	ik.Charged = p.clock.Now()
	return true
}

// countingHandler counts the Guard's log records by level and message.
type countingHandler struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.n[r.Level.String()+": "+r.Message]++
	h.mu.Unlock()
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// idemRun is the idempotency part of a run while it runs.
type idemRun struct {
	load    IdemLoad
	closer  func() error
	srv     *httptest.Server
	guard   *idempotency.Guard
	prov    *provider
	logs    *countingHandler
	stop    context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	keys    []*IdemKey
	status  map[string]int
	started atomic.Int64
}

// startIdem starts the idempotency clients of a run on b's client -1.
func startIdem(ctx context.Context, b *Backend, load IdemLoad, clock *Clock, seed uint64) (*idemRun, error) {
	load.fill()
	l, closer, err := b.open(ctx, -1)
	if err != nil {
		return nil, fmt.Errorf("torture: opening %s: %w", b.Name, err)
	}
	store, ok := l.(idempotency.Store)
	if !ok {
		_ = closer()
		return nil, fmt.Errorf("torture: the %s backend (%T) is not an idempotency.Store", b.Name, l)
	}
	ir := &idemRun{load: load, closer: closer, logs: &countingHandler{n: map[string]int{}}, status: map[string]int{},
		prov: &provider{clock: clock, keys: map[string]*IdemKey{}, tokens: map[string]uint64{}}}
	guard, err := idempotency.New(store,
		idempotency.WithScope(func(*http.Request) string { return "torture" }),
		idempotency.WithNamespace(fmt.Sprintf("torture/%x", rand.Uint64())),
		idempotency.WithLeaseTTL(load.LeaseTTL),
		idempotency.WithRetention(time.Hour),
		idempotency.WithRetryAfter(time.Second),
		idempotency.WithMaxRetryAfter(time.Second),
		idempotency.WithLogger(slog.New(ir.logs)))
	if err != nil {
		_ = closer()
		return nil, err
	}
	work := load.Work
	prov := ir.prov
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		prov.started(key)
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
		if sleepCtx(r.Context(), jitter(rng, work/2)) != nil {
			// The client left or the lease was lost before the charge:
			// nothing was done, and the answer says so.
			http.Error(w, "cancelled before the charge", http.StatusServiceUnavailable)
			return
		}
		token, _ := idempotency.TokenFromContext(r.Context())
		if !prov.charge(key, token) {
			http.Error(w, "stale fencing token", http.StatusConflict)
			return
		}
		// The charge is sent: the provider's answer takes its time whether
		// or not the client is still there.
		time.Sleep(jitter(rng, work/2))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"charged":true}`)
	})
	ir.guard = guard
	ir.srv = httptest.NewServer(guard.Middleware(handler))
	cctx, stop := context.WithCancel(ctx)
	ir.stop = stop
	for c := range load.Clients {
		ir.wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			defer hc.CloseIdleConnections()
			for n := 0; cctx.Err() == nil; n++ {
				ck := &IdemKey{Key: fmt.Sprintf("c%d-%d-%x", c, n, rng.Uint32()), At: clock.Now()}
				ir.mu.Lock()
				ir.keys = append(ir.keys, ck)
				ir.mu.Unlock()
				ir.started.Add(1)
				idemClient(cctx, hc, ir.srv.URL, ck, load, rng, ir.count)
			}
		})
	}
	return ir, nil
}

func (ir *idemRun) count(status string) {
	ir.mu.Lock()
	ir.status[status]++
	ir.mu.Unlock()
}

// finish stops the clients, the server and the store, and returns what
// happened to every key.
func (ir *idemRun) finish() *IdemResult {
	ir.stop()
	ir.wg.Wait()
	ir.srv.Close()
	// Results still being stored in the background (a store that did not
	// answer Complete in time) are stored before the backend closes, as a
	// server shutting down would.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	_ = ir.guard.Shutdown(ctx)
	cancel()
	_ = ir.closer()
	res := &IdemResult{Load: ir.load, Statuses: ir.status}
	ir.prov.mu.Lock()
	for _, ck := range ir.keys {
		k := *ck
		if pk := ir.prov.keys[k.Key]; pk != nil {
			k.Runs, k.Effects, k.Stale, k.Charged = pk.Runs, pk.Effects, pk.Stale, pk.Charged
		}
		res.Keys = append(res.Keys, k)
	}
	ir.prov.mu.Unlock()
	ir.logs.mu.Lock()
	res.Logged = ir.logs.n
	ir.logs.mu.Unlock()
	return res
}

// idemClient works on one key until it gets a final answer, gives up, or
// the run ends: like a browser or SDK, it retries after timeouts, 409s and
// 5xx; sometimes it double-clicks (two attempts at once) and sometimes it
// leaves in the middle of the handler.
func idemClient(ctx context.Context, hc *http.Client, url string, ck *IdemKey, cfg IdemLoad, rng *rand.Rand, status func(string)) {
	giveUp := time.Now().Add(cfg.GiveUp)
	var mu sync.Mutex
	attempt := func(timeout time.Duration) int {
		actx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(actx, http.MethodPost, url+"/checkout", strings.NewReader(`{"cart":"torture","amount":100}`))
		req.Header.Set("Idempotency-Key", ck.Key)
		req.Header.Set("Content-Type", "application/json")
		mu.Lock()
		ck.Attempts++
		mu.Unlock()
		resp, err := hc.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				status("client gave up")
			}
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		s := strconv.Itoa(resp.StatusCode)
		if resp.Header.Get(idempotency.ReplayedHeader) == "true" {
			s += " replayed"
		}
		status(s)
		return resp.StatusCode
	}
	if rng.IntN(10) == 0 {
		// A double click: a second attempt at once, whose answer is
		// dropped as a browser drops the first of two.
		var wg sync.WaitGroup
		wg.Go(func() { attempt(cfg.Timeout) })
		defer wg.Wait()
	}
	for ctx.Err() == nil && time.Now().Before(giveUp) {
		timeout := cfg.Timeout
		if rng.IntN(5) == 0 {
			timeout = time.Duration(rng.Int64N(int64(2*cfg.Work) + 1))
		}
		code := attempt(timeout)
		mu.Lock()
		ck.Final = code
		mu.Unlock()
		switch {
		case code >= 200 && code < 300:
			mu.Lock()
			ck.Got2xx = true
			mu.Unlock()
			return
		case code == http.StatusUnprocessableEntity || code == http.StatusBadRequest:
			return // final: a client bug, which this client does not make
		}
		// 409 in progress, 5xx, 503 store down, or no answer: retry soon.
		if sleepCtx(ctx, 5*time.Millisecond+time.Duration(rng.Int64N(int64(50*time.Millisecond)))) != nil {
			return
		}
	}
}

// IdemFigures are the figures of the idempotency part of a run.
type IdemFigures struct {
	Keys      int
	Attempts  int
	Answered  int // keys that got a 2xx
	Unsettled int // keys that never got one (gave up or the run ended)
	Effects   int
	Statuses  map[string]int
	Logged    map[string]int
	LeaseTTL  time.Duration
}

// checkEffects counts the charges of every key: exactly one for a key that
// got a 2xx, at most one for any key.
func checkEffects(r *IdemResult, fig *IdemFigures) []Violation {
	*fig = IdemFigures{Keys: len(r.Keys), Statuses: r.Statuses, Logged: r.Logged, LeaseTTL: r.Load.LeaseTTL}
	var vs []Violation
	for _, k := range r.Keys {
		fig.Attempts += k.Attempts
		fig.Effects += k.Effects
		if k.Got2xx {
			fig.Answered++
		} else {
			fig.Unsettled++
		}
		// A double charge spans the key's life up to its latest charge: the
		// faults it overlaps may explain it.
		at := max(k.Charged, k.At)
		switch {
		case k.Got2xx && k.Effects != 1:
			vs = append(vs, Violation{From: k.At, At: at, What: fmt.Sprintf("key %s got a 2xx but was charged %d times (%d handler runs, %d attempts)", k.Key, k.Effects, k.Runs, k.Attempts)})
		case k.Effects > 1:
			vs = append(vs, Violation{From: k.At, At: at, What: fmt.Sprintf("key %s was charged %d times (%d handler runs, %d attempts, last status %d)", k.Key, k.Effects, k.Runs, k.Attempts, k.Final)})
		}
	}
	return vs
}
