// Package story is the story the checkout example tells (see
// examples/checkout): a checkout endpoint whose handler charges a card,
// behind the idempotency middleware, and a client that behaves like real
// users and networks do — it double-clicks, fires a burst, times out and
// retries, gives up on a charge that takes longer than the key's lease,
// retries with a changed cart, and hits a failing payment provider. Run
// prints what happened and checks that every key was charged exactly once.
//
// The story opens its backend with lock.Open, so it runs on every backend
// its command imports: examples/checkout imports memlock only (the root
// module needs no server client); internal/integration/cmd/checkout, in the
// integration module, imports every backend.
package story

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/idempotency"
)

// Main is a command's main: it parses the flags -backend (the URL of the
// lock backend, mem:// by default) and -v (print every request and
// response), tells the story and exits with Run's status.
func Main() {
	backend := flag.String("backend", "mem://", "lock backend URL: "+strings.Join(lock.Schemes(), "://, ")+"://")
	verbose := flag.Bool("v", false, "print every request and response")
	flag.Parse()
	os.Exit(Run(*backend, *verbose, os.Stdout))
}

// Run tells the story on the backend that backendURL opens (its scheme
// must be registered: import the backend's package), writing the report,
// and every request and response if verbose, to out. It returns the exit
// status: 0 if every key was charged exactly once, 1 if not, 2 if the story
// could not start.
func Run(backendURL string, verbose bool, out io.Writer) int {
	return RunWith(backendURL, verbose, out, nil)
}

// RunWith is Run with the backend's Store passed through wrap (when not
// nil) before the Guard uses it: lock.ObserveStore, to watch the story
// (observers/otellock/example serves its metrics).
func RunWith(backendURL string, verbose bool, out io.Writer, wrap func(lock.Store) lock.Store) int {
	ctx := context.Background()
	b, err := lock.Open(ctx, backendURL)
	if err != nil {
		fmt.Fprintf(out, "checkout: %v (registered schemes: %s)\n", err, strings.Join(lock.Schemes(), ", "))
		return 2
	}
	defer b.Close()

	provider := newProvider()
	leaseTTL := leaseTTLFor(backendURL)
	var store lock.Store = b
	if wrap != nil {
		store = wrap(b)
	}
	guard, err := idempotency.New(store,
		// One caller never replays another's receipt: keys are scoped by
		// the authenticated user.
		idempotency.WithScope(userOf),
		idempotency.RequireKey(),
		idempotency.WithRetention(time.Hour),
		// Short, so that a slow charge outlasts it within the story's
		// seconds; the lease is renewed while the handler runs.
		idempotency.WithLeaseTTL(leaseTTL),
		// A duplicate in flight is told the lease's remaining time, up to
		// a second here, so that the story's retries come quickly.
		idempotency.WithMaxRetryAfter(time.Second),
		// The story's own log is the report; keep the Guard quiet.
		idempotency.WithLogger(slog.New(slog.DiscardHandler)),
	)
	if err != nil {
		fmt.Fprintf(out, "checkout: %v\n", err)
		return 2
	}
	mux := http.NewServeMux()
	mux.Handle("POST /checkout", authenticate(guard.Middleware(checkoutHandler(provider))))
	srv := httptest.NewServer(mux) // on 127.0.0.1, a random port
	defer srv.Close()

	c := &client{base: srv.URL, http: srv.Client(), verbose: verbose, out: out}
	fmt.Fprintf(out, "idemlock checkout story on %s (server %s)\n\n", backendURL, srv.URL)

	s := &story{out: out, provider: provider, client: c, leaseTTL: leaseTTL}
	s.doubleClick()
	s.burst()
	s.timeoutRetry()
	s.slowerThanLease()
	s.changedCart()
	s.failingCharge()
	s.otherUser()
	return s.report()
}

// ---------------------------------------------------------------- server

type userKey struct{}

// authenticate stands in for real authentication: the bearer token is the
// user's name.
func authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || user == "" {
			http.Error(w, "unauthenticated", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, user)))
	})
}

// leaseTTLFor returns a lease TTL short enough for a slow charge to
// outlast it in seconds, and one the backend honours: memory and Redis
// count milliseconds (a second leaves renewal room on a loaded machine);
// etcd and memcached whole seconds (etcd grants at least about 2 s);
// Consul what its agent's session_ttl_min allows, 10 s by default, lower
// when the URL's min_ttl says so.
func leaseTTLFor(backendURL string) time.Duration {
	u, err := url.Parse(backendURL)
	if err != nil {
		return idempotency.DefaultLeaseTTL
	}
	switch {
	case u.Scheme == "mem" || strings.HasPrefix(u.Scheme, "redis"):
		return time.Second
	case u.Scheme == "consul":
		if d, err := time.ParseDuration(u.Query().Get("min_ttl")); err == nil {
			return max(2*time.Second, d)
		}
		return 10 * time.Second
	}
	return 2 * time.Second
}

func userOf(r *http.Request) string {
	u, _ := r.Context().Value(userKey{}).(string)
	return u
}

type order struct {
	Cart   string `json:"cart"`
	Amount int    `json:"amount"` // cents
}

type receipt struct {
	Order  string `json:"order"`
	Charge string `json:"charge"`
	Amount int    `json:"amount"`
}

// checkoutHandler charges the card and answers 201 with a receipt, or 502
// when the payment provider fails (the middleware then releases the key,
// so the client may retry).
func checkoutHandler(p *provider) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var o order
		if err := json.NewDecoder(r.Body).Decode(&o); err != nil || o.Amount <= 0 {
			http.Error(w, "bad order", http.StatusBadRequest)
			return
		}
		token, _ := idempotency.TokenFromContext(r.Context())
		id := userOf(r) + "/" + r.Header.Get("Idempotency-Key")
		// The charge is a call to a remote provider: once sent it happens,
		// whether or not our client is still waiting.
		charge, err := p.charge(context.WithoutCancel(r.Context()), id, o, token)
		if err != nil {
			http.Error(w, "payment provider: "+err.Error(), http.StatusBadGateway)
			return
		}
		rc := receipt{Order: "ord_" + charge[3:], Charge: charge, Amount: o.Amount}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/orders/"+rc.Order)
		w.Header().Set("Set-Cookie", "last_order="+rc.Order) // never replayed
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(rc)
	})
}

// provider is the payment provider: it counts charges per idempotency key
// and checks fencing tokens, as a resource protected by a lock should.
type provider struct {
	mu        sync.Mutex
	charges   map[string]int // per user/key
	lastToken map[string]uint64
	slow      map[string]time.Duration // cart → latency
	failNext  map[string]bool          // cart → fail the next charge
	fenced    int
	seq       int
}

func newProvider() *provider {
	return &provider{charges: map[string]int{}, lastToken: map[string]uint64{}, slow: map[string]time.Duration{}, failNext: map[string]bool{}}
}

var errDeclinedUpstream = errors.New("upstream timeout, card not charged")

func (p *provider) charge(ctx context.Context, id string, o order, token uint64) (string, error) {
	p.mu.Lock()
	delay, fail := p.slow[o.Cart], p.failNext[o.Cart]
	delete(p.failNext, o.Cart)
	p.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
	}
	if fail {
		return "", errDeclinedUpstream
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if token <= p.lastToken[id] {
		p.fenced++
		return "", fmt.Errorf("stale fencing token %d", token)
	}
	p.lastToken[id] = token
	p.charges[id]++
	p.seq++
	return fmt.Sprintf("ch_%04d", p.seq), nil
}

func (p *provider) setSlow(cart string, d time.Duration) {
	p.mu.Lock()
	p.slow[cart] = d
	p.mu.Unlock()
}

func (p *provider) failOnce(cart string) {
	p.mu.Lock()
	p.failNext[cart] = true
	p.mu.Unlock()
}

func (p *provider) chargesFor(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.charges[id]
}

// ---------------------------------------------------------------- client

type client struct {
	base    string
	http    *http.Client
	verbose bool
	out     io.Writer
	mu      sync.Mutex
}

type result struct {
	status   int
	replayed bool
	problem  string // the problem type's name, for middleware errors
	err      error  // a transport error (timeout)
	retry    time.Duration
	body     string
}

func (r result) String() string {
	switch {
	case r.err != nil:
		return "client gave up (" + shortErr(r.err) + ")"
	case r.replayed:
		return fmt.Sprintf("%d %s, replayed", r.status, http.StatusText(r.status))
	case r.problem != "":
		return fmt.Sprintf("%d %s (%s)", r.status, http.StatusText(r.status), r.problem)
	}
	return fmt.Sprintf("%d %s", r.status, http.StatusText(r.status))
}

func shortErr(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return err.Error()
}

func (c *client) post(user, key string, o order, timeout time.Duration) result {
	body, _ := json.Marshal(o)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/checkout", strings.NewReader(string(body)))
	req.Header.Set("Authorization", "Bearer "+user)
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.log("POST %s key=%s → %v", o.Cart, short(key), err)
		return result{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := result{status: resp.StatusCode, replayed: resp.Header.Get(idempotency.ReplayedHeader) == "true", body: string(b)}
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		r.retry = time.Duration(secs) * time.Second
	}
	if resp.Header.Get("Content-Type") == "application/problem+json" {
		var p idempotency.Problem
		_ = json.Unmarshal(b, &p)
		_, r.problem, _ = strings.Cut(p.Type, "#")
	}
	c.log("POST %s key=%s → %s", o.Cart, short(key), r)
	return r
}

// retryAfter is the delay a 409 asks for, which the story honours.
func retryAfter(r result) time.Duration {
	if r.retry > 0 {
		return r.retry
	}
	return time.Second
}

func (c *client) log(format string, args ...any) {
	if c.verbose {
		c.mu.Lock()
		fmt.Fprintf(c.out, "      "+format+"\n", args...)
		c.mu.Unlock()
	}
}

func short(key string) string {
	if len(key) > 8 {
		return key[:8]
	}
	return key
}

func newKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ---------------------------------------------------------------- story

type story struct {
	out      io.Writer
	provider *provider
	client   *client
	leaseTTL time.Duration
	steps    []*step
}

// step is one scene: its requests, their outcomes and the charges made.
type step struct {
	title    string
	ids      []string // user/key pairs the scene used
	want     []int    // charges expected per id
	outcomes map[string]int
	order    []string // outcomes in the order first seen
	sent     int
	mu       sync.Mutex // requests of one scene may run at once
}

func (s *story) begin(title string) *step {
	st := &step{title: title, outcomes: map[string]int{}}
	fmt.Fprintf(s.out, "%d. %s\n", len(s.steps)+1, title)
	return st
}

func (st *step) record(r result) result {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.sent++
	k := r.String()
	if st.outcomes[k] == 0 {
		st.order = append(st.order, k)
	}
	st.outcomes[k]++
	return r
}

func (s *story) end(st *step, why string) {
	s.steps = append(s.steps, st)
	var parts []string
	for _, k := range st.order {
		parts = append(parts, fmt.Sprintf("%d × %s", st.outcomes[k], k))
	}
	fmt.Fprintf(s.out, "   %d requests: %s\n", st.sent, strings.Join(parts, "; "))
	for i, id := range st.ids {
		got := s.provider.chargesFor(id)
		mark := "ok"
		if got != st.want[i] {
			mark = fmt.Sprintf("WRONG, want %d", st.want[i])
		}
		fmt.Fprintf(s.out, "   charges for %s…: %d (%s)\n", id[:min(len(id), 14)], got, mark)
	}
	fmt.Fprintf(s.out, "   why: %s\n\n", why)
}

// untilDone retries a request the way a polite client does: after a 409 it
// waits for Retry-After and tries again, until it gets a final answer.
func (s *story) untilDone(st *step, user, key string, o order) result {
	for {
		r := st.record(s.client.post(user, key, o, 5*time.Second))
		if r.status != http.StatusConflict {
			return r
		}
		time.Sleep(retryAfter(r))
	}
}

func (s *story) doubleClick() {
	st := s.begin("Double-click: the Pay button fires twice with the same key")
	key, o := newKey(), order{Cart: "cart-double", Amount: 4200}
	st.ids, st.want = []string{"alice/" + key}, []int{1}
	s.provider.setSlow(o.Cart, 150*time.Millisecond)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { s.untilDone(st, "alice", key, o) })
	}
	wg.Wait()
	s.end(st, "the second click arrived while the first was being charged: 409 with Retry-After; its retry got the stored receipt (Idempotent-Replayed: true)")
}

func (s *story) burst() {
	st := s.begin("Burst: a flaky proxy fires 20 copies of one request at once")
	key, o := newKey(), order{Cart: "cart-burst", Amount: 1999}
	st.ids, st.want = []string{"alice/" + key}, []int{1}
	s.provider.setSlow(o.Cart, 100*time.Millisecond)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { st.record(s.client.post("alice", key, o, 5*time.Second)) })
	}
	wg.Wait()
	s.end(st, "one copy claimed the key and charged; the copies that arrived while it ran got 409, any that came after got the replayed 201")
}

func (s *story) timeoutRetry() {
	st := s.begin("Timeout: the provider is slow, the client gives up after 200ms and retries")
	key, o := newKey(), order{Cart: "cart-slow", Amount: 7500}
	st.ids, st.want = []string{"alice/" + key}, []int{1}
	s.provider.setSlow(o.Cart, 600*time.Millisecond)
	st.record(s.client.post("alice", key, o, 200*time.Millisecond))
	s.untilDone(st, "alice", key, o)
	s.end(st, "the charge went through after the client left, so its 201 was stored; the retry waited out the 409 and got that receipt instead of a second charge")
}

func (s *story) slowerThanLease() {
	// Long enough that retries come well after the first TTL (the client
	// honours Retry-After: 1 s).
	delay := s.leaseTTL * 5 / 2
	st := s.begin(fmt.Sprintf("Slower than the lease: the charge takes %v, the key's lease TTL is %v, the client gives up after 200ms", delay, s.leaseTTL))
	key, o := newKey(), order{Cart: "cart-slower", Amount: 12000}
	st.ids, st.want = []string{"alice/" + key}, []int{1}
	s.provider.setSlow(o.Cart, delay)
	st.record(s.client.post("alice", key, o, 200*time.Millisecond))
	s.untilDone(st, "alice", key, o)
	s.end(st, "the lease is renewed for as long as the handler runs, not as long as the client waits: every retry during the charge got 409, none ran a second charge, and the last one got the stored receipt")
}

func (s *story) changedCart() {
	st := s.begin("Changed cart: a retry reuses the key with a different amount")
	key := newKey()
	st.ids, st.want = []string{"alice/" + key}, []int{1}
	st.record(s.client.post("alice", key, order{Cart: "cart-edit", Amount: 1000}, 5*time.Second))
	st.record(s.client.post("alice", key, order{Cart: "cart-edit", Amount: 1500}, 5*time.Second))
	s.end(st, "the key names the first request; a different body with it is a client bug, answered 422 and never charged")
}

func (s *story) failingCharge() {
	st := s.begin("Failing charge: the provider errors once, the user clicks Pay again")
	key, o := newKey(), order{Cart: "cart-fail", Amount: 3000}
	st.ids, st.want = []string{"alice/" + key}, []int{1}
	s.provider.failOnce(o.Cart)
	st.record(s.client.post("alice", key, o, 5*time.Second))
	st.record(s.client.post("alice", key, o, 5*time.Second))
	st.record(s.client.post("alice", key, o, 5*time.Second))
	s.end(st, "a 5xx is not an outcome: the key was released, the retry charged once, the next retry replayed")
}

func (s *story) otherUser() {
	st := s.begin("Another user sends the same key (a leaked or colliding key)")
	key, o := newKey(), order{Cart: "cart-shared", Amount: 500}
	st.ids, st.want = []string{"alice/" + key, "bob/" + key}, []int{1, 1}
	st.record(s.client.post("alice", key, o, 5*time.Second))
	st.record(s.client.post("bob", key, o, 5*time.Second))
	s.end(st, "keys are scoped by the authenticated user: bob got his own charge and never saw alice's receipt")
}

func (s *story) report() int {
	total := map[string]int{}
	sent, bad := 0, 0
	for _, st := range s.steps {
		sent += st.sent
		for k, n := range st.outcomes {
			switch {
			case strings.Contains(k, "replayed"):
				total["replays"] += n
			case strings.HasPrefix(k, "201"):
				total["201 first"] += n
			case strings.HasPrefix(k, "409"):
				total["409"] += n
			case strings.HasPrefix(k, "422"):
				total["422"] += n
			case strings.HasPrefix(k, "5"):
				total["5xx"] += n
			case strings.HasPrefix(k, "client gave up"):
				total["timeouts"] += n
			default:
				total["other"] += n
			}
		}
		for i, id := range st.ids {
			if s.provider.chargesFor(id) != st.want[i] {
				bad++
			}
		}
	}
	charges := 0
	s.provider.mu.Lock()
	for _, n := range s.provider.charges {
		charges += n
	}
	keys := len(s.provider.charges)
	s.provider.mu.Unlock()
	fmt.Fprintf(s.out, "Summary\n")
	fmt.Fprintf(s.out, "   requests sent       %d\n", sent)
	fmt.Fprintf(s.out, "   charges executed    %d (for %d user/key pairs)\n", charges, keys)
	fmt.Fprintf(s.out, "   first 201s          %d\n", total["201 first"])
	fmt.Fprintf(s.out, "   replays             %d (stored response, Idempotent-Replayed: true)\n", total["replays"])
	fmt.Fprintf(s.out, "   409 in progress     %d (retry after Retry-After)\n", total["409"])
	fmt.Fprintf(s.out, "   422 key reused      %d (different body, same key)\n", total["422"])
	fmt.Fprintf(s.out, "   5xx released        %d (key freed for a retry)\n", total["5xx"])
	fmt.Fprintf(s.out, "   client timeouts     %d\n", total["timeouts"])
	if total["other"] > 0 {
		fmt.Fprintf(s.out, "   other               %d\n", total["other"])
	}
	if bad > 0 || charges != keys {
		fmt.Fprintf(s.out, "\nFAIL: %d user/key pairs were not charged exactly once\n", bad)
		return 1
	}
	fmt.Fprintf(s.out, "\nOK: exactly one charge per key (%s requests, %s charges)\n", strconv.Itoa(sent), strconv.Itoa(charges))
	return 0
}
