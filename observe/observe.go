// Package observe is what idemlock reports about its locks while they are
// used: waits, holds, renewals, losses and idempotency outcomes, as [Event]s
// handed to an [Observer].
//
// # Turning it on
//
// Observation is turned on in one place: wrap the Locker (or Store) with
// lock.Observe (or lock.ObserveStore) and use the wrapped value everywhere
// the plain one was used:
//
//	l := lock.Observe(redislock.New(client), observe.Slog(slog.Default()),
//		observe.WithKeyClass(observe.PrefixClass(":")))
//	lease, err := lock.Acquire(ctx, l, "checkout:order-42", 10*time.Second)
//
// Everything that is given the wrapped Locker, or a lease it returned, finds
// the observer on it: its own TryAcquire, Refresh and Release (and Claim and
// Complete of a Store), lock.Acquire, lock.KeepAlive, lock.Do, and the
// idempotency Guard, middleware and worker. Nothing else has to be told.
// A Locker that is not wrapped costs nothing: the helpers make one type
// assertion to find that no observer is there, and allocate nothing.
//
// The wrapper keeps every optional interface of the wrapped Locker
// (lock.Notifier, lock.Pinger, lock.TTLLimiter, lock.Admin, lock.Store,
// idempotency.FingerprintClaimer) and of its leases (lock.Deadliner,
// lock.LossNotifier), and claims none that the wrapped one lacks where a
// helper decides its behaviour by type assertion: a wrapped Locker that
// cannot notify is still polled. (Ping and the Admin methods of a wrapped
// Locker that lacks them answer an error matching errors.ErrUnsupported,
// and TTLLimits no limits, which is what the helpers do for a Locker
// without them.)
//
// The observer is found on the Locker rather than passed as an option so
// that one wrap reaches every helper, including those another package calls
// on your behalf, and so that no helper's option list grows a field it
// would have to thread through.
//
// # Keys are not reported
//
// Keys can be secrets or personal data (an idempotency key, a user's e-mail
// in a lock name), so an event carries the key's class, never the key,
// unless [WithRawKeys] is given; the key is also taken out of the message
// of an event's Err (which still unwraps to the original error, whose own
// message names it). The class is "default" unless
// [WithKeyClass] names a function that derives it, such as [PrefixClass].
// Idempotency keys reach a Store already hashed, so the idempotency
// events' class is the Guard's own: the ServeMux pattern that routed the
// request ("POST /checkout"), else the namespace (idempotency.WithNamespace),
// else [DefaultClass].
//
// # Work run under a lease
//
// Events report what has happened, so an observer learns of a lease's
// holding when it ends. lock.Do, and the idempotency Guard and worker,
// also run work under the lease they take; an Observer that is a
// [HoldScoper] is told when that work starts (StartHold, with the take's
// event) and returns the context the work runs with, and the event that
// ends the holding (Ends true) goes to the function it returned instead of
// Observe. The OpenTelemetry adapter uses it to make the work's spans
// children of a live lock.hold span. Leases a caller takes and releases
// itself are reported to Observe alone, as are all events of an Observer
// that is not a HoldScoper (Slog, Func): for them nothing changes, and a
// Locker that is not observed pays one type switch, no allocation.
//
// # Adapters
//
// [Slog] logs events with log/slog. The OpenTelemetry adapter (metrics and
// spans) is the module github.com/idemlock/lock/observers/otellock, so that
// this module keeps no third-party dependency. [Multi] sends events to
// several observers (and is a HoldScoper when one of them is); [Func] makes
// one of a function.
//
// Observers are called synchronously, on the goroutine of the operation they
// report, and must be quick and safe for concurrent use. They must not
// retain the Event's Err beyond the call if it may be large, and must not
// call the Locker they observe.
package observe

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Observer receives the events of observed Lockers. It is called
// synchronously and concurrently; see the package doc.
type Observer interface {
	// Observe is handed one event. ctx is the context of the operation the
	// event reports (a request's, for the idempotency events), so that an
	// observer can find the trace it belongs to.
	Observe(ctx context.Context, e Event)
}

// HoldScoper is an Observer that follows a lease's holding while it lasts,
// rather than only learning of it when it ends: an adapter that traces
// makes the work done under the lease a child of a live "hold" span.
// Observers that are not HoldScopers (Slog, Func) see no difference.
//
// lock.Do (and the idempotency worker and middleware, which also run
// user work under a lease) calls StartHold once the lease is taken and
// before the work starts, on the goroutine that took it. e is the take's
// event again (Kind [KindTryAcquire], Outcome [Acquired], Token, Backend,
// Class and Key as the take reported them) with Hold set to the time since
// the take returned: the holding began at time.Now().Add(-e.Hold).
//
// The context StartHold returns is the one the work runs with (its
// cancellation on a loss is derived from it); it must be ctx or derive
// from it. The function it returns, end, is called exactly once, instead
// of Observe, with the event that ends the holding (the lease's first
// Release or Complete, or its loss: the event with Ends true, of kind
// [KindRelease] or [KindLost]), on the goroutine that reports it, which
// need not be the one StartHold ran on: end must do whatever Observe does
// with that event (count it, log it) as well as close what StartHold
// opened. Every other event of the lease still goes to Observe. Leases
// nothing calls StartHold for (those taken with TryAcquire or Acquire and
// handled by the caller) go to Observe alone.
//
// StartHold returning a nil end declines: the holding is reported to
// Observe as if the Observer were not a HoldScoper, and the returned
// context is not used.
type HoldScoper interface {
	Observer
	StartHold(ctx context.Context, e Event) (context.Context, func(ctx context.Context, e Event))
}

// Func is an Observer made of a function.
type Func func(ctx context.Context, e Event)

// Observe calls f.
func (f Func) Observe(ctx context.Context, e Event) { f(ctx, e) }

// Kind says what an event reports.
type Kind uint8

// The kinds of events.
const (
	// KindTryAcquire is one attempt to take a key: a TryAcquire (or a
	// Store's Claim) on an observed Locker, including each attempt Acquire
	// makes. Outcome is [Acquired], [Contended], [Completed] (a Claim that
	// found a record) or [Failed]; Latency is the call's duration.
	KindTryAcquire Kind = iota + 1
	// KindAcquire is the end of a lock.Acquire (and so of the take lock.Do
	// makes). Outcome is [Acquired], [Canceled] (its context ended while
	// waiting) or [Failed]; Wait is the time from call to return, Attempts
	// the TryAcquires it made and Wakeups the release notifications that
	// woke it (zero on a backend that is polled).
	KindAcquire
	// KindRefresh is one Refresh of an observed lease (lock.KeepAlive's
	// renewals among them). Outcome is [OK], [NotHeld] or [Failed] (a
	// transient failure, outcome unknown); Latency is its duration and Hold
	// the time since the lease was taken.
	KindRefresh
	// KindRelease is a Release (or a Store's Complete) of an observed
	// lease. Outcome is [OK], [NotHeld] or [Failed]; Latency is its
	// duration and Hold the time since the lease was taken.
	KindRelease
	// KindLost is a lease lost while lock.KeepAlive kept it (and so while
	// lock.Do ran its function): Err is the cause (it matches
	// lock.ErrLeaseLost) and Hold the time since the lease was taken.
	KindLost
	// KindIdempotency is the outcome of one request to an idempotency
	// Guard (the HTTP middleware) or of one run of its worker Do: Outcome
	// is one of [FirstRun], [Replay], [InProgress], [FingerprintMismatch],
	// [ReleasedAfterError], [Tombstone] or [StoreError]; Latency is the
	// time the Guard spent on it and Err the error, if any.
	KindIdempotency
)

var kindNames = [...]string{"", "try_acquire", "acquire", "refresh", "release", "lost", "idempotency"}

// String returns the kind's name, as the adapters report it.
func (k Kind) String() string {
	if int(k) < len(kindNames) && k != 0 {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Outcome says how the operation an event reports ended. Its values are
// lower-case words, fit for a metric attribute.
type Outcome string

// Outcomes of the lock events.
const (
	Acquired  Outcome = "acquired"  // the key was taken
	Contended Outcome = "contended" // another lease held the key
	Completed Outcome = "completed" // a Claim found a completed record
	Canceled  Outcome = "canceled"  // the context ended while waiting
	OK        Outcome = "ok"        // a Refresh or Release succeeded
	NotHeld   Outcome = "not_held"  // the lease no longer held its key
	Failed    Outcome = "error"     // any other error: bad input, a backend failure, an unknown outcome
)

// Outcomes of the idempotency events ([KindIdempotency]).
const (
	// FirstRun: the request (or worker call) was the first for its key
	// and ran.
	FirstRun Outcome = "first_run"
	// Replay: a completed record was replayed; the work did not run again.
	Replay Outcome = "replay"
	// InProgress: another request for the key was still running; the
	// duplicate was refused (HTTP 409) or gave up waiting.
	InProgress Outcome = "in_progress"
	// FingerprintMismatch: the key was reused for a different request
	// (HTTP 422).
	FingerprintMismatch Outcome = "fingerprint_mismatch"
	// ReleasedAfterError: the work ran and failed in a way that may be
	// retried (an HTTP 5xx, a worker error), so the key was released
	// rather than completed.
	ReleasedAfterError Outcome = "released_after_error"
	// Tombstone: the outcome could not be stored, or the lease was lost,
	// after the work ran; the key keeps a marker so that the work is not
	// run again.
	Tombstone Outcome = "tombstone"
	// StoreError: the Store failed (Claim or Complete), so the request
	// could not be guarded.
	StoreError Outcome = "store_error"
)

// Event is one thing an observed Locker reports. Which fields are set
// depends on Kind; the rest are zero.
type Event struct {
	Kind    Kind
	Outcome Outcome
	// Backend names the backend ("memlock", "redislock", ...; see
	// [WithBackend]).
	Backend string
	// Class is the key's class (see [WithKeyClass]); Key is the key
	// itself, set only with [WithRawKeys].
	Class string
	Key   string
	// Token is the lease's fencing token, when a lease is involved.
	Token uint64
	// Wait, Attempts and Wakeups describe an Acquire ([KindAcquire]).
	Wait     time.Duration
	Attempts int
	Wakeups  int
	// Latency is the duration of the one operation reported.
	Latency time.Duration
	// Hold is how long the lease had been held (since its take returned).
	Hold time.Duration
	// Ends is true on the one event that ends an observed lease's holding
	// as the observer counts leases: its first Release or Complete, or its
	// loss, whichever comes first. Counting KindTryAcquire events with
	// Outcome Acquired up and events with Ends down gives the leases in
	// flight.
	Ends bool
	// Status is the HTTP status the Guard answered, for
	// [KindIdempotency] events of the middleware (zero for the worker).
	Status int
	// Err is the error of a failed operation, or the cause of a loss.
	Err error
}

// Multi returns an Observer that hands each event to every one of obs in
// turn. Nil observers are skipped.
//
// When any of obs is a [HoldScoper], so is the result: its StartHold calls
// each scoper's StartHold in turn, each with the context the one before it
// returned, and returns the last context; its end hands the ending event to
// every one of obs in turn, to a scoper's end if it started a holding and
// to Observe otherwise.
func Multi(obs ...Observer) Observer {
	var list []Observer
	scoping := false
	for _, o := range obs {
		if o != nil {
			list = append(list, o)
			_, ok := o.(HoldScoper)
			scoping = scoping || ok
		}
	}
	if scoping {
		return scopingMulti{list}
	}
	return multi(list)
}

type multi []Observer

func (m multi) Observe(ctx context.Context, e Event) {
	for _, o := range m {
		o.Observe(ctx, e)
	}
}

// scopingMulti is a Multi with at least one HoldScoper among its
// observers.
type scopingMulti struct{ multi }

func (m scopingMulti) StartHold(ctx context.Context, e Event) (context.Context, func(context.Context, Event)) {
	ends := make([]func(context.Context, Event), len(m.multi))
	started := false
	for i, o := range m.multi {
		hs, ok := o.(HoldScoper)
		if !ok {
			continue
		}
		hctx, end := hs.StartHold(ctx, e)
		if end == nil {
			continue
		}
		ends[i], started = end, true
		if hctx != nil {
			ctx = hctx
		}
	}
	if !started {
		return ctx, nil
	}
	return ctx, func(ctx context.Context, e Event) {
		for i, o := range m.multi {
			if ends[i] != nil {
				ends[i](ctx, e)
			} else {
				o.Observe(ctx, e)
			}
		}
	}
}

// DefaultClass is the class of every key unless [WithKeyClass] says
// otherwise.
const DefaultClass = "default"

// Option configures what an observed Locker reports; see lock.Observe.
type Option func(*Scope)

// WithBackend sets the backend name events carry. By default it is the
// package name of the wrapped Locker's type ("memlock", "redislock").
func WithBackend(name string) Option { return func(s *Scope) { s.backend = name } }

// WithKeyClass sets the function that maps a key to its class, the name
// under which events about the key are reported and counted. It must be
// quick, safe for concurrent use, and return few distinct values (metrics
// are kept per class): never the key, nor anything unbounded drawn from it.
// Idempotency events do not use it (see the package doc).
func WithKeyClass(classify func(key string) string) Option {
	return func(s *Scope) { s.classify = classify }
}

// WithRawKeys makes events carry the key itself in Event.Key. Use it only
// when keys are neither secrets nor personal data: the slog adapter then
// logs them.
func WithRawKeys() Option { return func(s *Scope) { s.raw = true } }

// PrefixClass returns a key-class function for [WithKeyClass] that takes
// the part of a key before the first sep ("checkout" of
// "checkout:order-42"). A key without sep, or whose prefix is longer than
// 32 bytes or holds anything but ASCII letters, digits, '-', '_' and '.'
// (so that no identifier is reported by mistake), is in [DefaultClass].
func PrefixClass(sep string) func(key string) string {
	return func(key string) string {
		i := strings.Index(key, sep)
		if i <= 0 || i > 32 || sep == "" {
			return DefaultClass
		}
		p := key[:i]
		for j := 0; j < len(p); j++ {
			c := p[j]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
				return DefaultClass
			}
		}
		return p
	}
}

// Scope is an Observer bound to the settings of one observed Locker: its
// backend name and how keys are reported. The observed Locker and its
// leases carry it; lock.ObserverOf returns it, for helpers written outside
// package lock that report events of their own.
type Scope struct {
	o        Observer
	backend  string
	classify func(string) string
	raw      bool
}

// NewScope binds o to opts, with backend as the backend name unless
// [WithBackend] is among them. It returns nil for a nil o.
func NewScope(o Observer, backend string, opts ...Option) *Scope {
	if o == nil {
		return nil
	}
	s := &Scope{o: o, backend: backend}
	for _, opt := range opts {
		if opt != nil {
			opt(s)
		}
	}
	return s
}

// Observer returns the observer the scope hands events to.
func (s *Scope) Observer() Observer { return s.o }

// Backend returns the backend name events carry.
func (s *Scope) Backend() string { return s.backend }

// Emit fills in e's Backend, Class and (with [WithRawKeys]) Key for key,
// and hands e to the observer. A nil Scope does nothing.
func (s *Scope) Emit(ctx context.Context, key string, e Event) {
	if s == nil {
		return
	}
	s.fill(key, &e)
	s.o.Observe(ctx, e)
}

// fill sets e's Backend, Class and Key for key, and takes key out of Err's
// message unless [WithRawKeys] was given.
func (s *Scope) fill(key string, e *Event) {
	e.Backend = s.backend
	e.Class = DefaultClass
	if s.classify != nil {
		e.Class = s.classify(key)
	}
	if s.raw {
		e.Key = key
	} else if e.Err != nil {
		e.Err = redact(e.Err, key)
	}
}

// StartHold starts following the holding of a lease on key when the
// observer is a [HoldScoper] (see there for e and the results), filling in
// e as Emit does. It returns ctx and a nil end when the observer is not
// one or declines, or the Scope is nil: the holding's end is then reported
// with Emit. Otherwise end fills in the ending event as Emit does and
// hands it to the scoper's end; it must be called exactly once, with the
// event whose Ends is true.
func (s *Scope) StartHold(ctx context.Context, key string, e Event) (context.Context, func(ctx context.Context, e Event)) {
	if s == nil {
		return ctx, nil
	}
	hs, ok := s.o.(HoldScoper)
	if !ok {
		return ctx, nil
	}
	s.fill(key, &e)
	hctx, end := hs.StartHold(ctx, e)
	if end == nil {
		return ctx, nil
	}
	if hctx == nil {
		hctx = ctx
	}
	return hctx, func(ctx context.Context, e Event) {
		s.fill(key, &e)
		end(ctx, e)
	}
}

// redact returns err with every appearance of key in its message replaced
// by "<key>": error messages of the library and its backends name the key
// (whole, quoted, or cut to 64 bytes). The result still matches what err
// matches (errors.Is, errors.As).
func redact(err error, key string) error {
	msg := err.Error()
	out := redactKey(msg, key)
	if out == msg {
		return err
	}
	return &redacted{err: err, msg: out}
}

// redactKey replaces key in msg by "<key>", in one pass, so that no
// replacement is replaced again: quoted (as the library's messages name
// keys), whole, or cut to 64 bytes, raw or escaped as quoting escapes it
// (as they name long keys: driver.DisplayKey with %q). A key shorter
// than 8 bytes is replaced only where it is not part of a longer word or
// number, so that key "42" does not turn "status 429" into "status
// <key>9"; a longer key is replaced wherever it appears.
func redactKey(msg, key string) string {
	if key == "" {
		return msg
	}
	// Every form of a key that quoting leaves alone contains its first 64
	// bytes: without them in msg there is nothing to replace (and nothing
	// to allocate).
	if cut := key[:min(len(key), 64)]; plain(cut) && !strings.Contains(msg, cut) {
		return msg
	}
	forms := []string{strconv.Quote(key), key}
	if len(key) > 64 {
		cut := key[:64]
		forms = append(forms, cut)
		// Quoted, as %q names it, the cut may be escaped: a quote, a
		// backslash, a control character, a character the cut split.
		if q := strconv.Quote(cut); q[1:len(q)-1] != cut {
			forms = append(forms, q[1:len(q)-1])
		}
	}
	anywhere := len(key) >= 8
	var b strings.Builder
	changed := false
	for i := 0; i < len(msg); {
		matched := ""
		for n, f := range forms {
			if !strings.HasPrefix(msg[i:], f) {
				continue
			}
			if n > 0 && !anywhere && (i > 0 && wordByte(msg[i-1]) || i+len(f) < len(msg) && wordByte(msg[i+len(f)])) {
				continue
			}
			matched = f
			break
		}
		if matched == "" {
			if changed {
				b.WriteByte(msg[i])
			}
			i++
			continue
		}
		if !changed {
			b.WriteString(msg[:i])
			changed = true
		}
		b.WriteString("<key>")
		i += len(matched)
	}
	if !changed {
		return msg
	}
	return b.String()
}

// plain reports whether s is printable ASCII that quoting leaves as it is.
func plain(s string) bool {
	for i := range len(s) {
		if c := s[i]; c < ' ' || c > '~' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// wordByte reports whether c is an ASCII letter or digit.
func wordByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// redacted is an error whose message has its key taken out.
type redacted struct {
	err error
	msg string
}

func (r *redacted) Error() string { return r.msg }
func (r *redacted) Unwrap() error { return r.err }

// EmitClass hands e to the observer with Class set to class rather than
// derived from key: the idempotency Guard uses it, since the keys its
// Store sees are hashes. key (the caller's own key) is reported as Emit
// reports it: in Key only with [WithRawKeys], and otherwise taken out of
// Err's message. A nil Scope does nothing.
func (s *Scope) EmitClass(ctx context.Context, class, key string, e Event) {
	if s == nil {
		return
	}
	e.Backend = s.backend
	e.Class = class
	if s.raw {
		e.Key = key
	} else if e.Err != nil && key != "" {
		e.Err = redact(e.Err, key)
	}
	s.o.Observe(ctx, e)
}
