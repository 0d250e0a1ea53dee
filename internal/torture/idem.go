package torture

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock/idempotency"
)

// IdemConfig is an idempotency torture run: clients with retries, timeouts
// and disconnects send checkouts through the idempotency middleware on a
// backend while faults come and go, and every charge is counted.
type IdemConfig struct {
	Backend Backend
	// Clients send at once, each working through keys of its own.
	Clients int
	// LeaseTTL is the Guard's in-progress lease (WithLeaseTTL).
	LeaseTTL time.Duration
	// Work is how long the handler takes (jittered): half before the
	// charge, when it gives up if its context ends, and half after it,
	// when it cannot.
	Work time.Duration
	// Timeout bounds one attempt of a client; a fifth of the attempts use
	// a random shorter one, to leave in the middle of the handler.
	Timeout time.Duration
	// GiveUp bounds the time a client spends on one key.
	GiveUp      time.Duration
	Faults      []Fault
	Settle      time.Duration
	MinKeys     int
	MinDuration time.Duration
	MaxDuration time.Duration
	Seed        uint64
	Logf        func(format string, args ...any)
}

// IdemKey is what happened to one idempotency key.
type IdemKey struct {
	Key      string
	Attempts int
	Got2xx   bool // some attempt got a 2xx (first or replayed)
	Final    int  // the last status (0: a transport error or timeout)
	Runs     int  // times the handler started for it
	Effects  int  // charges the provider accepted
	Stale    int  // charges the provider refused as stale (a lower token)
	At       int64
}

// IdemResult is the history of an idempotency run.
type IdemResult struct {
	Config   IdemConfig
	Start    int64
	End      int64
	Keys     []IdemKey
	Statuses map[string]int // attempt outcomes: "201", "409", "timeout", …
	Logged   map[string]int // the Guard's log lines by level and message
	Faults   []FaultWindow
}

// provider is the payment provider behind the checkout handler: it counts
// the charges per key and refuses a charge with a lower fencing token than
// one it has seen for that key.
type provider struct {
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

// RunIdem runs an idempotency torture.
func RunIdem(ctx context.Context, cfg IdemConfig) (*IdemResult, error) {
	if cfg.Clients <= 0 {
		cfg.Clients = 8
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = idempotency.DefaultLeaseTTL
	}
	if cfg.Work <= 0 {
		cfg.Work = 20 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.GiveUp <= 0 {
		cfg.GiveUp = 3*cfg.LeaseTTL + time.Minute
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 2*cfg.Backend.TTL + cfg.Backend.Slack
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	l, closer, err := cfg.Backend.open(ctx)
	if err != nil {
		return nil, fmt.Errorf("torture: opening %s: %w", cfg.Backend.Name, err)
	}
	defer closer()
	store, ok := l.(idempotency.Store)
	if !ok {
		return nil, fmt.Errorf("torture: the %s backend (%T) is not an idempotency.Store", cfg.Backend.Name, l)
	}
	logs := &countingHandler{n: map[string]int{}}
	guard, err := idempotency.New(store,
		idempotency.WithScope(func(*http.Request) string { return "torture" }),
		idempotency.WithNamespace(fmt.Sprintf("torture/%x", rand.Uint64())),
		idempotency.WithLeaseTTL(cfg.LeaseTTL),
		idempotency.WithRetention(time.Hour),
		idempotency.WithRetryAfter(time.Second),
		idempotency.WithLogger(slog.New(logs)))
	if err != nil {
		return nil, err
	}
	prov := &provider{keys: map[string]*IdemKey{}, tokens: map[string]uint64{}}
	work := cfg.Work
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
	srv := httptest.NewServer(guard.Middleware(handler))
	defer srv.Close()

	clock := NewClock()
	res := &IdemResult{Config: cfg, Start: clock.Now(), Statuses: map[string]int{}}
	var statusMu sync.Mutex
	status := func(s string) {
		statusMu.Lock()
		res.Statuses[s]++
		statusMu.Unlock()
	}
	var keysDone atomic.Int64
	var client sync.Map // key → *IdemKey as the client saw it
	cctx, stopClients := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for c := range cfg.Clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(cfg.Seed, uint64(c)))
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			defer hc.CloseIdleConnections()
			for n := 0; cctx.Err() == nil; n++ {
				key := fmt.Sprintf("c%d-%d-%x", c, n, rng.Uint32())
				ck := &IdemKey{Key: key, At: clock.Now()}
				client.Store(key, ck)
				idemClient(cctx, hc, srv.URL, ck, cfg, rng, status)
				keysDone.Add(1)
			}
		})
	}
	env := &Env{Backend: cfg.Backend, rng: rand.New(rand.NewPCG(cfg.Seed, 1))}
	lcfg := Config{Backend: cfg.Backend, Faults: cfg.Faults, Settle: cfg.Settle, MinTakes: cfg.MinKeys, MinDuration: cfg.MinDuration, MaxDuration: cfg.MaxDuration}
	lr := &Result{}
	schedErr := schedule(ctx, lcfg, env, func() int { return int(keysDone.Load()) }, clock, lr, logf)
	stopClients()
	wg.Wait()
	res.End = clock.Now()
	res.Faults = lr.Faults

	prov.mu.Lock()
	client.Range(func(k, v any) bool {
		ck := v.(*IdemKey)
		if pk := prov.keys[ck.Key]; pk != nil {
			ck.Runs, ck.Effects, ck.Stale = pk.Runs, pk.Effects, pk.Stale
		}
		res.Keys = append(res.Keys, *ck)
		return true
	})
	prov.mu.Unlock()
	sort.Slice(res.Keys, func(i, j int) bool { return res.Keys[i].At < res.Keys[j].At })
	logs.mu.Lock()
	res.Logged = logs.n
	logs.mu.Unlock()
	if schedErr != nil && ctx.Err() == nil {
		return res, schedErr
	}
	return res, ctx.Err()
}

// idemClient works on one key until it gets a final answer, gives up, or
// the run ends: like a browser or SDK, it retries after timeouts, 409s and
// 5xx; sometimes it double-clicks (two attempts at once) and sometimes it
// leaves in the middle of the handler.
func idemClient(ctx context.Context, hc *http.Client, url string, ck *IdemKey, cfg IdemConfig, rng *rand.Rand, status func(string)) {
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

// IdemReport is the verdict on an idempotency run.
type IdemReport struct {
	Backend   string
	Duration  time.Duration
	Keys      int
	Attempts  int
	Answered  int // keys that got a 2xx
	Unsettled int // keys that never got one (gave up or the run ended)
	Effects   int
	Statuses  map[string]int
	Logged    map[string]int
	Faults    []FaultWindow
	FaultDefs []Fault
	LeaseTTL  time.Duration
	// Count lists keys charged other than once after a 2xx, or more than
	// once at all.
	Count CheckResult
}

// CheckIdem counts the effects of every key of an idempotency run.
func CheckIdem(r *IdemResult) *IdemReport {
	rep := &IdemReport{Backend: r.Config.Backend.Name, Duration: time.Duration(r.End - r.Start), Keys: len(r.Keys),
		Statuses: r.Statuses, Logged: r.Logged, Faults: r.Faults, FaultDefs: r.Config.Faults, LeaseTTL: r.Config.LeaseTTL}
	var vs []Violation
	for _, k := range r.Keys {
		rep.Attempts += k.Attempts
		rep.Effects += k.Effects
		if k.Got2xx {
			rep.Answered++
		} else {
			rep.Unsettled++
		}
		switch {
		case k.Got2xx && k.Effects != 1:
			vs = append(vs, Violation{At: k.At, What: fmt.Sprintf("key %s got a 2xx but was charged %d times (%d handler runs, %d attempts)", k.Key, k.Effects, k.Runs, k.Attempts)})
		case k.Effects > 1:
			vs = append(vs, Violation{At: k.At, What: fmt.Sprintf("key %s was charged %d times (%d handler runs, %d attempts, last status %d)", k.Key, k.Effects, k.Runs, k.Attempts, k.Final)})
		}
	}
	lr := &Result{Faults: r.Faults, Config: Config{Faults: r.Config.Faults, Settle: r.Config.Settle}}
	rep.Count = CheckResult{Name: CheckEffects, Violations: windows(lr).mark(CheckEffects, vs)}
	return rep
}
