package idempotency

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock"
)

// Defaults of a [Guard].
const (
	// DefaultHeader is the request header that carries the key.
	DefaultHeader = "Idempotency-Key"
	// DefaultLeaseTTL is the TTL of the in-progress lease, renewed every
	// third of it while the work runs; it bounds how long a crashed
	// process keeps a key "in progress". Ten seconds is the shortest session
	// a default Consul agent grants.
	DefaultLeaseTTL = lock.DefaultTTL
	// DefaultRetention is how long a completed record is replayed.
	DefaultRetention = 24 * time.Hour
	// DefaultRetryAfter is what a duplicate in flight is told to wait when
	// the Store cannot tell the holder's remaining time, and what a 503 is
	// told.
	DefaultRetryAfter = time.Second
	// DefaultMaxRetryAfter caps the wait a duplicate in flight is told
	// when it is derived from the holder's remaining time.
	DefaultMaxRetryAfter = 10 * time.Second
	// DefaultMaxRequestBody caps the request body the middleware buffers
	// and hashes; a larger body is refused with 413.
	DefaultMaxRequestBody = 1 << 20
	// DefaultMaxResponseBody caps the response body stored for replay; a
	// larger response is sent to its caller and leaves a tombstone.
	DefaultMaxResponseBody = 1 << 20
	// DefaultStoreTimeout bounds each call the Guard makes to the Store
	// (see [WithStoreTimeout]).
	DefaultStoreTimeout = 5 * time.Second
)

// ErrInvalidOption is matched by the error [New] and [Guard.With] return
// for an option out of range; the error is an [*OptionError].
var ErrInvalidOption = errors.New("idempotency: invalid option")

// OptionError describes a rejected option.
type OptionError struct {
	Option string // the option's name, for example "WithLeaseTTL"
	Reason string
	// Err is the error behind Reason when there is one: a *lock.TTLError
	// for a TTL the Store's backend cannot honour.
	Err error
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("idempotency: invalid option %s: %s", e.Option, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidOption) true, and whatever Err
// matches (lock.ErrInvalidTTL for a TTL the backend cannot honour).
func (e *OptionError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrInvalidOption}
	}
	return []error{ErrInvalidOption, e.Err}
}

// Outcome is what the middleware does with a finished response.
type Outcome int

const (
	// OutcomeRelease gives the key up without storing anything: the client may
	// retry and the handler runs again.
	OutcomeRelease Outcome = iota
	// OutcomeStore keeps the response for replay (or a tombstone when it cannot be
	// replayed): the handler never runs again for this key.
	OutcomeStore
)

func (o Outcome) String() string {
	if o == OutcomeStore {
		return "store"
	}
	return "release"
}

// Classifier decides, from the final status and the response header as the
// handler set it, whether a response is stored or the key released. It is
// not consulted for panics, client disconnects without a response, or
// responses marked with [MarkTerminal] (always stored).
type Classifier func(status int, h http.Header) Outcome

// DefaultClassifier stores 2xx responses and releases everything else:
// 3xx (a redirect, for example ServeMux's to a path with a trailing slash,
// usually means the request has yet to reach the handler that acts; a
// handler that answers a completed POST with 303 See Other declares it
// with [MarkTerminal]), 4xx (the request was refused, so nothing happened)
// and 5xx, 408 and 429 (transient).
func DefaultClassifier(status int, _ http.Header) Outcome {
	if status >= 200 && status < 300 {
		return OutcomeStore
	}
	return OutcomeRelease
}

// Option configures a [Guard].
type Option func(*config)

type config struct {
	header       string
	methods      map[string]bool
	requireKey   bool
	scope        func(*http.Request) string
	route        func(*http.Request) string
	namespace    string
	leaseTTL     time.Duration
	retention    time.Duration
	retryAfter   time.Duration
	maxRetry     time.Duration
	wait         time.Duration
	maxReqBody   int64
	maxRespBody  int
	replayHeader map[string]bool
	classify     Classifier
	failOpen     bool
	storeTimeout time.Duration
	logger       *slog.Logger
	problemType  func(string) string
	err          error
}

// positive is an option that sets the duration field returns to d, which
// must be positive.
func positive(option string, d time.Duration, field func(*config) *time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.fail(option, "%v is not positive", d)
			return
		}
		*field(c) = d
	}
}

func (c *config) fail(option, format string, args ...any) {
	if c.err == nil {
		c.err = &OptionError{Option: option, Reason: fmt.Sprintf(format, args...)}
	}
}

// WithHeader sets the request header that carries the key (default
// [DefaultHeader]).
func WithHeader(name string) Option {
	return func(c *config) {
		if name == "" || strings.ContainsAny(name, " \t\r\n:") {
			c.fail("WithHeader", "%q is not a header name", name)
			return
		}
		c.header = http.CanonicalHeaderKey(name)
	}
}

// WithMethods sets the methods the middleware guards (default POST and
// PATCH); PUT and DELETE may be added. Safe methods (GET, HEAD, OPTIONS,
// TRACE) are refused: they are idempotent already, and replaying a stored
// GET would serve stale data.
func WithMethods(methods ...string) Option {
	return func(c *config) {
		if len(methods) == 0 {
			c.fail("WithMethods", "no method")
			return
		}
		m := make(map[string]bool, len(methods))
		for _, meth := range methods {
			switch meth = strings.ToUpper(meth); meth {
			case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodConnect:
				c.fail("WithMethods", "%s is never guarded: it is safe (or a tunnel) and must not be replayed", meth)
				return
			case "":
				c.fail("WithMethods", "empty method")
				return
			}
			m[meth] = true
		}
		c.methods = m
	}
}

// RequireKey makes a missing key a 400 problem on the guarded methods.
// Without it (the default) a request without a key passes through unguarded.
func RequireKey() Option { return func(c *config) { c.requireKey = true } }

// WithScope sets the function that names who is asking: the authenticated
// principal, a tenant and user id, an API key's id. Keys are scoped by it,
// so one caller can never replay — read — another's stored response, even
// with the same key.
//
// Without it every caller shares one key space. That is only safe when keys
// are unguessable and never shown to anyone but their creator, and when
// responses carry nothing private; [New] logs a warning at start-up.
// Scope runs after your authentication middleware, on the request it
// passes on; it must not read the body.
//
// With a scope set, a request for which it returns "" (no authenticated
// caller: a route left outside the authentication middleware, an
// anonymous request) is refused with 403 [ProblemScopeMissing] before
// anything is claimed or run, and the Guard's logger gets a warning (at
// most one a minute): an empty scope would otherwise merge every such
// caller into one key space and replay one's response to another. A
// service whose keys are deliberately global says so with a constant
// scope, for example WithScope(func(*http.Request) string { return "all" }).
func WithScope(scope func(r *http.Request) string) Option {
	return func(c *config) {
		if scope == nil {
			c.fail("WithScope", "nil function")
			return
		}
		c.scope = scope
	}
}

// WithRoute sets how the request's route is named in its fingerprint
// (default: r.Pattern when a ServeMux matched one, otherwise r.URL.Path).
// A route that includes the path parameters keeps a key reused on another
// resource from replaying: the default does, as r.Pattern is only used
// together with r.URL.Path.
func WithRoute(route func(r *http.Request) string) Option {
	return func(c *config) {
		if route == nil {
			c.fail("WithRoute", "nil function")
			return
		}
		c.route = route
	}
}

// WithNamespace separates Guards that share one Store (two services, or
// two APIs of one): the same key under two namespaces is two keys.
func WithNamespace(ns string) Option { return func(c *config) { c.namespace = ns } }

// WithLeaseTTL sets the TTL of the in-progress lease (default
// [DefaultLeaseTTL]); the lease is renewed every third of it while the work
// runs. Backends round it to their TTL step; etcd grants at least about 2 s
// and Consul sessions at least 10 s by default. [New] and [Guard.With]
// refuse a TTL the Store's backend reports it cannot honour (see
// lock.TTLLimiter) with an error matching both [ErrInvalidOption] and
// lock.ErrInvalidTTL that says what to use instead, rather than a 503 on
// every request later.
func WithLeaseTTL(d time.Duration) Option {
	return positive("WithLeaseTTL", d, func(c *config) *time.Duration { return &c.leaseTTL })
}

// WithRetention sets how long a completed record is kept and replayed
// (default [DefaultRetention]). After it a key is free again.
func WithRetention(d time.Duration) Option {
	return positive("WithRetention", d, func(c *config) *time.Duration { return &c.retention })
}

// WithRetryAfter sets the delay a duplicate in flight is told to wait
// when the Store cannot tell how long the holder's lease has left, and
// the Retry-After of a 503 (default [DefaultRetryAfter]). A duplicate in
// flight is told the holder's remaining lease time when the Store reports
// it (as a lock.NotAcquiredError's Remaining: every built-in backend
// does), capped by [WithMaxRetryAfter]: the Retry-After of a 409 (rounded
// up to whole seconds) and [InProgressError].RetryAfter.
func WithRetryAfter(d time.Duration) Option {
	return positive("WithRetryAfter", d, func(c *config) *time.Duration { return &c.retryAfter })
}

// WithMaxRetryAfter caps the delay a duplicate in flight is told to wait
// when it is derived from the holder's remaining lease time (default
// [DefaultMaxRetryAfter]): a holder that keeps renewing may finish long
// before its lease would end, so a client is never told to stay away
// longer than this.
func WithMaxRetryAfter(d time.Duration) Option {
	return positive("WithMaxRetryAfter", d, func(c *config) *time.Duration { return &c.maxRetry })
}

// retryAfter is the delay to tell a duplicate whose claim failed with
// held: the holder's remaining lease time when the Store reported it,
// capped, and the configured delay otherwise.
func (g *Guard) retryAfter(held error) time.Duration {
	var na *lock.NotAcquiredError
	if errors.As(held, &na) && na.Remaining > 0 {
		return min(na.Remaining, g.cfg.maxRetry)
	}
	return g.cfg.retryAfter
}

// WithWait makes a duplicate that arrives while the first request is in
// flight wait up to d for it to finish, then replay its response (or run,
// if the first released the key), instead of getting 409 at once. The wait
// uses the Store's release events when it implements lock.Notifier, and
// polls otherwise. Zero (the default) means no wait.
func WithWait(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.fail("WithWait", "%v is negative", d)
			return
		}
		c.wait = d
	}
}

// WithMaxRequestBody caps the request body, in bytes, the middleware reads
// to fingerprint (default [DefaultMaxRequestBody]). The body is buffered and
// handed to the handler whole; a larger body is refused with 413 before the
// handler runs. Hashing only a prefix would let two different requests of
// equal prefix share a fingerprint, so that is not offered.
func WithMaxRequestBody(n int64) Option {
	return func(c *config) {
		if n < 0 {
			c.fail("WithMaxRequestBody", "%d is negative", n)
			return
		}
		c.maxReqBody = n
	}
}

// WithMaxResponseBody caps the response body, in bytes, stored for replay
// (default [DefaultMaxResponseBody]). A larger response still reaches its
// caller in full; what is stored is a tombstone, so retries get a 422
// problem of type [ProblemNotReplayable] and the handler never runs twice.
func WithMaxResponseBody(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.fail("WithMaxResponseBody", "%d is negative", n)
			return
		}
		c.maxRespBody = n
	}
}

// WithReplayHeaders adds response headers to the allow-list that is stored
// and replayed (by default Content-Type, Content-Encoding, Content-Language,
// Content-Location, Location, ETag, Last-Modified, Cache-Control, Expires,
// Vary and Link). The headers in [NeverStored] cannot be added.
func WithReplayHeaders(names ...string) Option {
	return func(c *config) {
		add := make(map[string]bool, len(c.replayHeader)+len(names))
		for k := range c.replayHeader {
			add[k] = true
		}
		for _, n := range names {
			k := http.CanonicalHeaderKey(n)
			if neverStored[k] {
				c.fail("WithReplayHeaders", "%s is never stored or replayed", k)
				return
			}
			if k == "" {
				c.fail("WithReplayHeaders", "empty header name")
				return
			}
			add[k] = true
		}
		c.replayHeader = add
	}
}

// WithClassifier sets the function that decides whether a finished response
// is stored or its key released (default [DefaultClassifier]).
func WithClassifier(f Classifier) Option {
	return func(c *config) {
		if f == nil {
			c.fail("WithClassifier", "nil function")
			return
		}
		c.classify = f
	}
}

// FailOpen makes the middleware run the handler unguarded when the Store
// cannot be reached (the default fails closed with a 503 problem). Use it
// on a Guard made with [Guard.With] for the routes where a duplicate is
// cheaper than an outage.
func FailOpen() Option { return func(c *config) { c.failOpen = true } }

// WithStoreTimeout bounds every call the Guard makes to the Store (default
// [DefaultStoreTimeout]): the claim of a key (each one, when a duplicate
// waits with [WithWait]), the subscription a waiting duplicate makes, and
// the Complete or Release once the work is done, which run on a context
// detached from the request. A claim that does not answer in time fails
// closed with 503 [ProblemStoreUnavailable] (or runs the handler with
// [FailOpen]), naming the call in the problem's detail and in the log;
// [Do] returns a [*StoreError]. Its outcome is unknown: if the server took
// the key and the reply was lost, the key stays in progress until the
// lease TTL ends.
func WithStoreTimeout(d time.Duration) Option {
	return positive("WithStoreTimeout", d, func(c *config) *time.Duration { return &c.storeTimeout })
}

// WithLogger sets where the Guard reports what it cannot return to anyone:
// a failed Complete or Release after the response was sent, a record it
// could not decode, a request refused for an empty scope, a Guard built
// without a scope or around http.TimeoutHandler (default slog.Default(),
// so these reach the program's log unless it says otherwise; pass
// slog.New(slog.DiscardHandler) to silence them).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l == nil {
			c.fail("WithLogger", "nil logger")
			return
		}
		c.logger = l
	}
}

// WithProblemTypes sets the "type" URI of the middleware's problem
// responses. fn gets the package's constant for the problem (for example
// [ProblemInProgress]) and returns the URI to send: a page of your own API
// documentation, or "about:blank" (RFC 9457's "no more than the status
// code"), which is also what an empty result sends. By default the
// constants themselves are sent, which name this package.
//
//	idempotency.WithProblemTypes(func(p string) string {
//		_, name, _ := strings.Cut(p, "#") // "ProblemInProgress"
//		return "https://api.example.com/errors#" + name
//	})
func WithProblemTypes(fn func(problem string) string) Option {
	return func(c *config) {
		if fn == nil {
			c.fail("WithProblemTypes", "nil function")
			return
		}
		c.problemType = fn
	}
}

// Guard runs work at most once per idempotency key on a [Store]: as HTTP
// middleware ([Guard.Middleware]) or for workers ([Do]). It is safe for
// concurrent use.
type Guard struct {
	store Store
	cfg   config
	// lastScopeWarn is when the latest empty-scope warning was logged
	// (UnixNano), so that unauthenticated traffic cannot flood the log.
	lastScopeWarn *atomic.Int64
	// life counts claims in flight for Shutdown; shared with With's copies.
	life *lifecycle
}

// New returns a Guard on store. Bad options are reported as an error
// matching [ErrInvalidOption], never a panic; so are a lease TTL or a
// retention the store's backend cannot honour (the error then also
// matches lock.ErrInvalidTTL and names the fix, see [WithLeaseTTL]).
func New(store Store, opts ...Option) (*Guard, error) {
	if store == nil {
		return nil, &OptionError{Option: "store", Reason: "nil Store"}
	}
	c := config{
		header:       DefaultHeader,
		methods:      map[string]bool{http.MethodPost: true, http.MethodPatch: true},
		leaseTTL:     DefaultLeaseTTL,
		retention:    DefaultRetention,
		retryAfter:   DefaultRetryAfter,
		maxRetry:     DefaultMaxRetryAfter,
		maxReqBody:   DefaultMaxRequestBody,
		maxRespBody:  DefaultMaxResponseBody,
		replayHeader: defaultReplayHeaders(),
		classify:     DefaultClassifier,
		storeTimeout: DefaultStoreTimeout,
	}
	g := &Guard{store: store, cfg: c, lastScopeWarn: new(atomic.Int64), life: newLifecycle()}
	if err := g.apply(opts); err != nil {
		return nil, err
	}
	if g.cfg.scope == nil {
		g.logger().Warn("idempotency: Guard without WithScope: every caller shares one key space, so a caller who learns another's key can replay that caller's response; set WithScope to the authenticated principal")
	}
	return g, nil
}

// With returns a copy of g with more options, sharing its Store: for a
// route that fails open, waits, or requires a key while others do not.
func (g *Guard) With(opts ...Option) (*Guard, error) {
	n := &Guard{store: g.store, cfg: g.cfg, lastScopeWarn: g.lastScopeWarn, life: g.life}
	n.cfg.err = nil
	if err := n.apply(opts); err != nil {
		return nil, err
	}
	return n, nil
}

func (g *Guard) apply(opts []Option) error {
	for _, o := range opts {
		if o != nil {
			o(&g.cfg)
		}
	}
	if g.cfg.err != nil {
		return g.cfg.err
	}
	return g.checkTTLs()
}

// checkTTLs refuses, at construction, TTLs the Store's backend cannot
// honour (see lock.CheckTTL and lock.TTLLimiter), which would otherwise
// fail every request with 503: the lease TTL within the backend's limits,
// the retention within its maximum.
func (g *Guard) checkTTLs() error {
	if err := lock.CheckTTL(g.store, g.cfg.leaseTTL); err != nil {
		return &OptionError{Option: "WithLeaseTTL", Reason: err.Error(), Err: err}
	}
	if tl, ok := g.store.(lock.TTLLimiter); ok {
		if max := tl.TTLLimits().Max; max > 0 && g.cfg.retention > max {
			err := &lock.TTLError{TTL: g.cfg.retention, Reason: fmt.Sprintf("longer than the %v this backend accepts (%T); use at most %v", max, g.store, max)}
			return &OptionError{Option: "WithRetention", Reason: err.Error(), Err: err}
		}
	}
	return nil
}

func (g *Guard) logger() *slog.Logger {
	if g.cfg.logger != nil {
		return g.cfg.logger
	}
	return slog.Default()
}

// Store returns the Store the Guard keeps keys in.
func (g *Guard) Store() Store { return g.store }

// storeCtx returns a context for a call to the Store after the work ran:
// ctx's values without its cancellation, bounded by the store timeout.
func (g *Guard) storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	c := newDetachedCtx(ctx, g.cfg.storeTimeout)
	return c, c.stop
}

// release gives a lease up after the work, logging a failure. It stops
// renewal first. A lease whose loss the server confirmed (a refresh or the
// backend reported it not held) is not released: that could only report
// ErrNotHeld. A lease lost only by the local clock (no successful refresh
// before its deadline) is released all the same, since the server may
// still hold it: otherwise the key would stay locked for up to a TTL.
func (g *Guard) release(ctx context.Context, k *keeper) {
	k.Stop()
	if k.released() {
		return
	}
	sctx, cancel := g.storeCtx(ctx)
	defer cancel()
	if err := k.Lease().Release(sctx); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		g.releaseFailed(storeError("release", err, sctx, context.Background(), g.cfg.storeTimeout))
	}
}

// releaseFailed logs a failed Release, naming the call and whether it
// timed out.
func (g *Guard) releaseFailed(err error) {
	g.logger().Warn("idempotency: releasing a key failed; it stays in progress until its lease expires", storeAttrs(err, "release")...)
}

// storeAttrs are the log attributes of a failed store call: its name, the
// store timeout when it did not answer within it, and the error.
func storeAttrs(err error, call string) []any {
	var se *StoreError
	if errors.As(err, &se) {
		call = se.Call
		if se.Timeout > 0 {
			return []any{"call", call, "timeout", se.Timeout, "error", err}
		}
	}
	return []any{"call", call, "error", err}
}

// complete stores rec for k's lease. A Complete that fails for another
// reason than ErrNotHeld or ErrRecordTooLarge (a timeout, a dropped
// connection, a failover) is retried, with jittered backoff, until the
// store timeout: the outcome of a failed attempt is unknown, and a retry
// either stores the record or finds the lease ended (ErrNotHeld, which is
// then reported). Only a Store's explicit refusal of the record for its
// size ([ErrRecordTooLarge]) stores tomb instead, when given: the work was
// done, so the key must never be released for it to run again. If the
// record cannot be stored in time the key is released, so that it does
// not stay in progress until the lease expires. An error other than
// ErrNotHeld is a [*StoreError] naming the call "complete".
func (g *Guard) complete(ctx context.Context, k *keeper, rec []byte, tomb *record) (err error) {
	k.Stop()
	sctx, cancel := g.storeCtx(ctx)
	defer cancel()
	defer func() {
		if err != nil && !errors.Is(err, lock.ErrNotHeld) {
			err = storeError("complete", err, sctx, context.Background(), g.cfg.storeTimeout)
		}
	}()
	err = g.completeRetry(sctx, k.Lease(), rec)
	if err == nil || errors.Is(err, lock.ErrNotHeld) {
		return err
	}
	if tomb != nil && errors.Is(err, ErrRecordTooLarge) {
		terr := g.completeRetry(sctx, k.Lease(), appendRecord(nil, tomb))
		if terr == nil {
			g.logger().Warn("idempotency: the store refused the result for its size; a tombstone was stored instead, so duplicates get a not-replayable answer", "error", err)
			return nil
		}
		if errors.Is(terr, lock.ErrNotHeld) {
			return terr
		}
		err = errors.Join(err, terr)
	}
	// The record is lost: free the key rather than leave it in progress
	// until the lease expires.
	if rerr := k.Lease().Release(sctx); rerr != nil && !errors.Is(rerr, lock.ErrNotHeld) {
		err = errors.Join(err, rerr)
	}
	return err
}

// completeRetry calls Store.Complete until it succeeds, fails for a reason
// a retry cannot change (ErrNotHeld, ErrInvalidArgument, which
// ErrRecordTooLarge matches), or ctx ends; it returns the latest error.
//
// A retry that finds the lease ended may follow an attempt that was
// applied although its reply was lost: a Claim then tells whether the key
// holds exactly this record, which is success.
func (g *Guard) completeRetry(ctx context.Context, lease lock.Lease, rec []byte) error {
	backoff := 10 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := g.store.Complete(ctx, lease, rec, g.cfg.retention)
		if attempt > 0 && errors.Is(err, lock.ErrNotHeld) && g.holdsRecord(ctx, lease.Key(), rec) {
			return nil
		}
		if err == nil || errors.Is(err, lock.ErrNotHeld) || errors.Is(err, lock.ErrInvalidArgument) {
			return err
		}
		d := backoff/2 + rand.N(backoff)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return err // no time for another attempt
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// holdsRecord reports whether key is completed with exactly rec. A Claim
// that takes the key instead (it is free: the earlier Complete was not
// applied) gives it up at once.
func (g *Guard) holdsRecord(ctx context.Context, key string, rec []byte) bool {
	le, stored, err := g.store.Claim(ctx, key, g.cfg.leaseTTL)
	if le != nil {
		_ = le.Release(ctx)
		return false
	}
	return err == nil && bytes.Equal(stored, rec)
}

// tokenKey is the context key of the fencing token.
type tokenKey struct{}

// TokenFromContext returns the fencing token of the lease under which the
// current request or [Do] function runs: strictly greater than that of any
// earlier holder of the same key. Pass it to the protected resource so it
// can refuse a write from a holder that lost its lease.
func TokenFromContext(ctx context.Context) (uint64, bool) {
	t, ok := ctx.Value(tokenKey{}).(uint64)
	return t, ok
}

// tokenCtx carries the fencing token without boxing it until asked.
type tokenCtx struct {
	context.Context
	token uint64
}

func (c *tokenCtx) Value(key any) any {
	if _, ok := key.(tokenKey); ok {
		return c.token
	}
	return c.Context.Value(key)
}

func withToken(ctx context.Context, token uint64) context.Context {
	return &tokenCtx{ctx, token}
}
