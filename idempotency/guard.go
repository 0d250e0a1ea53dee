package idempotency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// ErrInvalidOption is matched by the error [New], [NewRunner] and [Guard.With] return
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

// Option configures a [Guard]. The options of the HTTP layer (headers,
// methods, scope, bodies, replay, classification) are Options only: they do
// not compile as a [RunnerOption]. Each [SharedOption] is both.
type Option interface{ applyGuard(*config) }

// SharedOption is an option of both [New] and [NewRunner]: what the run-once
// core reads (namespace, lease TTL, retention, retry delays, store timeout,
// logger).
type SharedOption func(*config)

func (o SharedOption) applyGuard(c *config)  { o.apply(c) }
func (o SharedOption) applyRunner(c *config) { o.apply(c) }
func (o SharedOption) apply(c *config) {
	if o != nil {
		o(c)
	}
}

// httpOption is an option of the HTTP layer alone.
type httpOption func(*config)

func (o httpOption) applyGuard(c *config) { o(c) }

// config is a Guard's: the core its [Runner] reads, and the HTTP layer's
// own settings.
type config struct {
	core
	header       string
	methods      map[string]bool
	requireKey   bool
	scope        func(*http.Request) string
	route        func(*http.Request) string
	wait         time.Duration
	maxReqBody   int64
	maxRespBody  int
	replayHeader map[string]bool
	classify     Classifier
	failOpen     bool
	problemType  func(string) string
	err          error
}

// positive is an option that sets the duration field returns to d, which
// must be positive.
func positive(option string, d time.Duration, field func(*config) *time.Duration) SharedOption {
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
	return httpOption(func(c *config) {
		if name == "" || strings.ContainsAny(name, " \t\r\n:") {
			c.fail("WithHeader", "%q is not a header name", name)
			return
		}
		c.header = http.CanonicalHeaderKey(name)
	})
}

// WithMethods sets the methods the middleware guards (default POST and
// PATCH); PUT and DELETE may be added. Safe methods (GET, HEAD, OPTIONS,
// TRACE) are refused: they are idempotent already, and replaying a stored
// GET would serve stale data.
func WithMethods(methods ...string) Option {
	return httpOption(func(c *config) {
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
	})
}

// RequireKey makes a missing key a 400 problem on the guarded methods.
// Without it (the default) a request without a key passes through unguarded.
func RequireKey() Option { return httpOption(func(c *config) { c.requireKey = true }) }

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
	return httpOption(func(c *config) {
		if scope == nil {
			c.fail("WithScope", "nil function")
			return
		}
		c.scope = scope
	})
}

// WithRoute sets how the request's route is named in its fingerprint
// (default: r.Pattern when a ServeMux matched one, otherwise r.URL.Path).
// A route that includes the path parameters keeps a key reused on another
// resource from replaying: the default does, as r.Pattern is only used
// together with r.URL.Path.
func WithRoute(route func(r *http.Request) string) Option {
	return httpOption(func(c *config) {
		if route == nil {
			c.fail("WithRoute", "nil function")
			return
		}
		c.route = route
	})
}

// WithNamespace separates Guards that share one Store (two services, or
// two APIs of one): the same key under two namespaces is two keys.
func WithNamespace(ns string) SharedOption { return func(c *config) { c.namespace = ns } }

// WithLeaseTTL sets the TTL of the in-progress lease (default
// [DefaultLeaseTTL]); the lease is renewed every third of it while the work
// runs. Backends round it to their TTL step; etcd grants at least about 2 s
// and Consul sessions at least 10 s by default. [New] and [Guard.With]
// refuse a TTL the Store's backend reports it cannot honour (see
// lock.TTLLimiter) with an error matching both [ErrInvalidOption] and
// lock.ErrInvalidTTL that says what to use instead, rather than a 503 on
// every request later.
func WithLeaseTTL(d time.Duration) SharedOption {
	return positive("WithLeaseTTL", d, func(c *config) *time.Duration { return &c.leaseTTL })
}

// WithRetention sets how long a completed record is kept and replayed
// (default [DefaultRetention]). After it a key is free again.
func WithRetention(d time.Duration) SharedOption {
	return positive("WithRetention", d, func(c *config) *time.Duration { return &c.retention })
}

// WithRetryAfter sets the delay a duplicate in flight is told to wait
// when the Store cannot tell how long the holder's lease has left, and
// the Retry-After of a 503 (default [DefaultRetryAfter]). A duplicate in
// flight is told the holder's remaining lease time when the Store reports
// it (as a lock.NotAcquiredError's Remaining: every built-in backend
// does), capped by [WithMaxRetryAfter]: the Retry-After of a 409 (rounded
// up to whole seconds) and [InProgressError].RetryAfter.
func WithRetryAfter(d time.Duration) SharedOption {
	return positive("WithRetryAfter", d, func(c *config) *time.Duration { return &c.retryAfter })
}

// WithMaxRetryAfter caps the delay a duplicate in flight is told to wait
// when it is derived from the holder's remaining lease time (default
// [DefaultMaxRetryAfter]): a holder that keeps renewing may finish long
// before its lease would end, so a client is never told to stay away
// longer than this.
func WithMaxRetryAfter(d time.Duration) SharedOption {
	return positive("WithMaxRetryAfter", d, func(c *config) *time.Duration { return &c.maxRetry })
}

// WithWait makes a duplicate that arrives while the first request is in
// flight wait up to d for it to finish, then replay its response (or run,
// if the first released the key), instead of getting 409 at once. The wait
// uses the Store's release events when it implements lock.Notifier, and
// polls otherwise. Zero (the default) means no wait.
func WithWait(d time.Duration) Option {
	return httpOption(func(c *config) {
		if d < 0 {
			c.fail("WithWait", "%v is negative", d)
			return
		}
		c.wait = d
	})
}

// WithMaxRequestBody caps the request body, in bytes, the middleware reads
// to fingerprint (default [DefaultMaxRequestBody]). The body is buffered and
// handed to the handler whole; a larger body is refused with 413 before the
// handler runs. Hashing only a prefix would let two different requests of
// equal prefix share a fingerprint, so that is not offered.
func WithMaxRequestBody(n int64) Option {
	return httpOption(func(c *config) {
		if n < 0 {
			c.fail("WithMaxRequestBody", "%d is negative", n)
			return
		}
		c.maxReqBody = n
	})
}

// WithMaxResponseBody caps the response body, in bytes, stored for replay
// (default [DefaultMaxResponseBody]). A larger response still reaches its
// caller in full; what is stored is a tombstone, so retries get a 422
// problem of type [ProblemNotReplayable] and the handler never runs twice.
func WithMaxResponseBody(n int) Option {
	return httpOption(func(c *config) {
		if n < 0 {
			c.fail("WithMaxResponseBody", "%d is negative", n)
			return
		}
		c.maxRespBody = n
	})
}

// WithReplayHeaders adds response headers to the allow-list that is stored
// and replayed (by default Content-Type, Content-Encoding, Content-Language,
// Content-Location, Location, ETag, Last-Modified, Cache-Control, Expires,
// Vary and Link). The headers in [NeverStored] cannot be added.
func WithReplayHeaders(names ...string) Option {
	return httpOption(func(c *config) {
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
	})
}

// WithClassifier sets the function that decides whether a finished response
// is stored or its key released (default [DefaultClassifier]).
func WithClassifier(f Classifier) Option {
	return httpOption(func(c *config) {
		if f == nil {
			c.fail("WithClassifier", "nil function")
			return
		}
		c.classify = f
	})
}

// FailOpen makes the middleware run the handler unguarded when the Store
// cannot be reached (the default fails closed with a 503 problem). Use it
// on a Guard made with [Guard.With] for the routes where a duplicate is
// cheaper than an outage.
func FailOpen() Option { return httpOption(func(c *config) { c.failOpen = true }) }

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
func WithStoreTimeout(d time.Duration) SharedOption {
	return positive("WithStoreTimeout", d, func(c *config) *time.Duration { return &c.storeTimeout })
}

// WithLogger sets where the Guard reports what it cannot return to anyone:
// a failed Complete or Release after the response was sent, a record it
// could not decode, a request refused for an empty scope, a Guard built
// without a scope or around http.TimeoutHandler (default slog.Default(),
// so these reach the program's log unless it says otherwise; pass
// slog.New(slog.DiscardHandler) to silence them).
func WithLogger(l *slog.Logger) SharedOption {
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
	return httpOption(func(c *config) {
		if fn == nil {
			c.fail("WithProblemTypes", "nil function")
			return
		}
		c.problemType = fn
	})
}

// Guard runs work at most once per idempotency key on a [Store] as HTTP
// middleware ([Guard.Middleware]), on its [Runner], the run-once core that
// [Do] and [Once] use too: a Guard can be passed to them directly. It is
// safe for concurrent use.
type Guard struct {
	r   *Runner
	cfg config
	// lastScopeWarn is when the latest empty-scope warning was logged
	// (UnixNano), so that unauthenticated traffic cannot flood the log.
	lastScopeWarn *atomic.Int64
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
		core:         defaultCore(),
		header:       DefaultHeader,
		methods:      map[string]bool{http.MethodPost: true, http.MethodPatch: true},
		maxReqBody:   DefaultMaxRequestBody,
		maxRespBody:  DefaultMaxResponseBody,
		replayHeader: defaultReplayHeaders(),
		classify:     DefaultClassifier,
	}
	g := &Guard{cfg: c, lastScopeWarn: new(atomic.Int64)}
	if err := g.apply(store, newLifecycle(), opts); err != nil {
		return nil, err
	}
	if g.cfg.scope == nil {
		g.logger().Warn("idempotency: Guard without WithScope: every caller shares one key space, so a caller who learns another's key can replay that caller's response; set WithScope to the authenticated principal")
	}
	return g, nil
}

// With returns a copy of g with more options, sharing its Store and its
// [Guard.Shutdown]: for a route that fails open, waits, or requires a key
// while others do not.
func (g *Guard) With(opts ...Option) (*Guard, error) {
	n := &Guard{cfg: g.cfg, lastScopeWarn: g.lastScopeWarn}
	n.cfg.err = nil
	if err := n.apply(g.r.store, g.r.life, opts); err != nil {
		return nil, err
	}
	return n, nil
}

// apply applies opts and makes the Guard's Runner from the result.
func (g *Guard) apply(store Store, life *lifecycle, opts []Option) error {
	for _, o := range opts {
		if o != nil {
			o.applyGuard(&g.cfg)
		}
	}
	if g.cfg.err != nil {
		return g.cfg.err
	}
	g.r = &Runner{store: store, cfg: g.cfg.core, life: life, obs: lock.ObserverOf(store)}
	return g.r.checkTTLs()
}

func (g *Guard) runner() *Runner {
	if g == nil {
		return nil
	}
	return g.r
}

// Runner returns the run-once core the Guard serves requests on: the same
// Store, namespace, lease TTL, retention and [Guard.Shutdown]. [Do] and
// [Once] accept the Guard itself as well.
func (g *Guard) Runner() *Runner { return g.r }

func (g *Guard) logger() *slog.Logger { return g.r.logger() }

// Store returns the Store the Guard keeps keys in.
func (g *Guard) Store() Store { return g.r.store }

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
