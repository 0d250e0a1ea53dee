package lock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock/observe"
)

// Observe returns a Locker that behaves as l and reports what is done with
// it to o (see package observe): its TryAcquires and its leases' Refreshes
// and Releases, and, since they find o on it, the waits of [Acquire], the
// losses seen by [KeepAlive] and [Do], and the outcomes of the idempotency
// Guard. Observation is turned on here and nowhere else; a Locker that is
// not wrapped pays nothing for it.
//
// The result keeps l's optional interfaces: it is a [Notifier] exactly when
// l is, a [Store] when l is (use [ObserveStore] to get one typed so), an
// idempotency.FingerprintClaimer when l is, and its leases are
// [Deadliner]s and [LossNotifier]s exactly when l's are. It is always a
// [Pinger], a [TTLLimiter], an [Admin] and a [Queuer]: for an l that lacks
// them, Ping, Queue and the Admin methods return an error matching
// [errors.ErrUnsupported] and TTLLimits reports no limits, as the helpers
// treat such an l (Acquire then waits unqueued).
// A nil o returns l itself; wrapping twice reports to both observers.
func Observe(l Locker, o observe.Observer, opts ...observe.Option) Locker {
	if l == nil || o == nil {
		return l
	}
	base := &observedLocker{inner: l, scope_: observe.NewScope(o, backendName(l), opts...)}
	_, notify := l.(Notifier)
	_, store := l.(Store)
	_, fp := l.(fingerprintClaimer)
	switch {
	case store && fp && notify:
		return observedNotifyingFPStore{base, notifying{base}, storing{base}, fingerprinting{base}}
	case store && fp:
		return observedFPStore{base, storing{base}, fingerprinting{base}}
	case store && notify:
		return observedNotifyingStore{base, notifying{base}, storing{base}}
	case store:
		return observedStore{base, storing{base}}
	case notify:
		return observedNotifier{base, notifying{base}}
	}
	return base
}

// ObserveStore is [Observe] for a Store: the result is a Store too.
func ObserveStore(s Store, o observe.Observer, opts ...observe.Option) Store {
	if s == nil {
		return nil
	}
	return Observe(s, o, opts...).(Store)
}

// ObserverOf returns the observation scope carried by v, a Locker made by
// [Observe] or a Lease it returned, or nil if v is not observed. Helpers
// outside this package (the idempotency Guard) report their own events
// through it.
func ObserverOf(v any) *observe.Scope {
	// A switch on the concrete types compares type words only: cheaper
	// than an assertion to an interface, which helpers make on every call
	// whether or not anything is observed.
	switch o := v.(type) {
	case *observedLocker:
		return o.scope_
	case observedNotifier:
		return o.scope_
	case observedStore:
		return o.scope_
	case observedNotifyingStore:
		return o.scope_
	case observedFPStore:
		return o.scope_
	case observedNotifyingFPStore:
		return o.scope_
	case *observedLease:
		return o.scope_
	case observedLeaseD:
		return o.scope_
	case observedLeaseL:
		return o.scope_
	case observedLeaseDL:
		return o.scope_
	}
	return nil
}

// fingerprintClaimer mirrors idempotency.FingerprintClaimer, which this
// package cannot import.
type fingerprintClaimer interface {
	ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (Lease, []byte, []byte, error)
}

// backendName is the package name of l's type: "memlock" for a
// *memlock.Locker.
func backendName(l Locker) string {
	name := strings.TrimLeft(fmt.Sprintf("%T", l), "*")
	if i := strings.IndexByte(name, '.'); i > 0 {
		name = name[:i]
	}
	return name
}

// observedLocker is the wrapper of a Locker with none of the optional
// interfaces that decide behaviour; the types below add those the wrapped
// Locker has.
type observedLocker struct {
	inner  Locker
	scope_ *observe.Scope
}

// Unwrap returns the observed Locker.
func (l *observedLocker) Unwrap() Locker { return l.inner }

// TryAcquire calls the observed Locker's and reports a [observe.KindTryAcquire]
// event; the lease it returns reports its Refreshes and Releases.
func (l *observedLocker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	start := time.Now()
	le, err := l.inner.TryAcquire(ctx, key, ttl)
	return l.taken(ctx, key, start, le, nil, err), err
}

// taken reports one take and wraps the lease it returned.
func (l *observedLocker) taken(ctx context.Context, key string, start time.Time, le Lease, record []byte, err error) Lease {
	now := time.Now()
	e := observe.Event{Kind: observe.KindTryAcquire, Outcome: observe.Acquired, Latency: now.Sub(start)}
	switch {
	case errors.Is(err, ErrNotAcquired):
		e.Outcome = observe.Contended
	case err != nil:
		e.Outcome, e.Err = observe.Failed, err
	case le == nil:
		e.Outcome = observe.Completed
	default:
		e.Token = le.Token()
	}
	l.scope_.Emit(ctx, key, e)
	if err != nil || le == nil {
		return le
	}
	return wrapLease(le, l.scope_, now)
}

// Ping calls the observed Locker's Ping, or reports that it has none.
func (l *observedLocker) Ping(ctx context.Context) error {
	if err := CheckContext(ctx); err != nil {
		return err
	}
	p, ok := l.inner.(Pinger)
	if !ok {
		return fmt.Errorf("lock: %T cannot be pinged: %w", l.inner, errors.ErrUnsupported)
	}
	return p.Ping(ctx)
}

// TTLLimits returns the observed Locker's limits, or none.
func (l *observedLocker) TTLLimits() TTLLimits {
	if tl, ok := l.inner.(TTLLimiter); ok {
		return tl.TTLLimits()
	}
	return TTLLimits{}
}

func (l *observedLocker) admin() (Admin, error) {
	if a, ok := l.inner.(Admin); ok {
		return a, nil
	}
	return nil, fmt.Errorf("lock: %T is not a lock.Admin: %w", l.inner, errors.ErrUnsupported)
}

// Inspect calls the observed Locker's [Admin.Inspect].
func (l *observedLocker) Inspect(ctx context.Context, key string) (KeyInfo, error) {
	a, err := l.admin()
	if err != nil {
		return KeyInfo{}, err
	}
	return a.Inspect(ctx, key)
}

// ForceRelease calls the observed Locker's [Admin.ForceRelease].
func (l *observedLocker) ForceRelease(ctx context.Context, key string) error {
	a, err := l.admin()
	if err != nil {
		return err
	}
	return a.ForceRelease(ctx, key)
}

// DeleteRecord calls the observed Locker's [Admin.DeleteRecord].
func (l *observedLocker) DeleteRecord(ctx context.Context, key string) error {
	a, err := l.admin()
	if err != nil {
		return err
	}
	return a.DeleteRecord(ctx, key)
}

func (l *observedLocker) subscribe(ctx context.Context, key string) (Subscription, error) {
	return l.inner.(Notifier).Subscribe(ctx, key)
}

func (l *observedLocker) claim(ctx context.Context, key string, ttl time.Duration) (Lease, []byte, error) {
	start := time.Now()
	le, rec, err := l.inner.(Store).Claim(ctx, key, ttl)
	return l.taken(ctx, key, start, le, rec, err), rec, err
}

func (l *observedLocker) claimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (Lease, []byte, []byte, error) {
	start := time.Now()
	le, rec, holder, err := l.inner.(fingerprintClaimer).ClaimFingerprint(ctx, key, ttl, fp)
	return l.taken(ctx, key, start, le, rec, err), rec, holder, err
}

func (l *observedLocker) complete(ctx context.Context, le Lease, record []byte, retention time.Duration) error {
	ol, inner := unwrapLease(le)
	if ol == nil {
		return l.inner.(Store).Complete(ctx, le, record, retention)
	}
	start := time.Now()
	err := l.inner.(Store).Complete(ctx, inner, record, retention)
	ol.ended(ctx, start, err)
	return err
}

// The wrappers for each combination of the optional interfaces that
// decide behaviour (Notifier, Store and FingerprintClaimer) are made of
// one part per interface, each written once.
type (
	observedNotifier struct {
		*observedLocker
		notifying
	}
	observedStore struct {
		*observedLocker
		storing
	}
	observedNotifyingStore struct {
		*observedLocker
		notifying
		storing
	}
	observedFPStore struct {
		*observedLocker
		storing
		fingerprinting
	}
	observedNotifyingFPStore struct {
		*observedLocker
		notifying
		storing
		fingerprinting
	}
)

// notifying, storing and fingerprinting are the parts: the methods of one
// optional interface, forwarded to the observed Locker's.
type (
	notifying      struct{ ol *observedLocker }
	storing        struct{ ol *observedLocker }
	fingerprinting struct{ ol *observedLocker }
)

// Subscribe calls the observed Locker's [Notifier.Subscribe].
func (p notifying) Subscribe(ctx context.Context, key string) (Subscription, error) {
	return p.ol.subscribe(ctx, key)
}

// Claim calls the observed Store's and reports it as a take.
func (p storing) Claim(ctx context.Context, key string, ttl time.Duration) (Lease, []byte, error) {
	return p.ol.claim(ctx, key, ttl)
}

// Complete calls the observed Store's and reports it as a release.
func (p storing) Complete(ctx context.Context, le Lease, record []byte, retention time.Duration) error {
	return p.ol.complete(ctx, le, record, retention)
}

// ClaimFingerprint calls the observed Store's and reports it as a take.
func (p fingerprinting) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (Lease, []byte, []byte, error) {
	return p.ol.claimFingerprint(ctx, key, ttl, fp)
}

// observedLease wraps a lease taken through an observed Locker; the types
// below add Deadliner and LossNotifier when the wrapped lease has them.
type observedLease struct {
	inner  Lease
	scope_ *observe.Scope
	taken  time.Time
	// started is set by the first StartHold, before it calls the observer,
	// so that a concurrent second one starts nothing.
	started atomic.Bool
	// mu orders the start of the holding against its end: StartHold holds
	// it while the observer starts the holding, so that an end reported
	// meanwhile waits for the holding it ends. It is held across no
	// request and no other observer call (an end is reported after it is
	// let go).
	mu   sync.Mutex
	done bool // an event with Ends was reported, or is being; guarded by mu
	// hold ends the observer's following of the holding (see StartHold):
	// it is handed the event with Ends instead of the observer. Nil when
	// nothing started one. Guarded by mu.
	hold func(context.Context, observe.Event)
}

type (
	observedLeaseD struct {
		*observedLease
		deadlining
	}
	observedLeaseL struct {
		*observedLease
		losing
	}
	observedLeaseDL struct {
		*observedLease
		deadlining
		losing
	}
)

// deadlining and losing are the parts of the lease wrappers: Deadliner's
// and LossNotifier's methods, forwarded to the observed lease's.
type (
	deadlining struct{ inner Lease }
	losing     struct{ inner Lease }
)

// Deadline returns the observed lease's [Deadliner.Deadline].
func (p deadlining) Deadline() time.Time { return p.inner.(Deadliner).Deadline() }

// Lost returns the observed lease's [LossNotifier.Lost].
func (p losing) Lost() <-chan struct{} { return p.inner.(LossNotifier).Lost() }

func wrapLease(le Lease, s *observe.Scope, taken time.Time) Lease {
	base := &observedLease{inner: le, scope_: s, taken: taken}
	_, d := le.(Deadliner)
	_, n := le.(LossNotifier)
	switch {
	case d && n:
		return observedLeaseDL{base, deadlining{le}, losing{le}}
	case d:
		return observedLeaseD{base, deadlining{le}}
	case n:
		return observedLeaseL{base, losing{le}}
	}
	return base
}

// unwrapLease returns the observing wrapper of le and the lease it wraps,
// or nil and le itself.
func unwrapLease(le Lease) (*observedLease, Lease) {
	var ol *observedLease
	switch l := le.(type) {
	case *observedLease:
		ol = l
	case observedLeaseD:
		ol = l.observedLease
	case observedLeaseL:
		ol = l.observedLease
	case observedLeaseDL:
		ol = l.observedLease
	}
	if ol == nil {
		return nil, le
	}
	return ol, ol.inner
}

// Unwrap returns the observed lease.
func (l *observedLease) Unwrap() Lease { return l.inner }

// Key returns the observed lease's key.
func (l *observedLease) Key() string { return l.inner.Key() }

// Token returns the observed lease's token.
func (l *observedLease) Token() uint64 { return l.inner.Token() }

// Refresh calls the observed lease's and reports a [observe.KindRefresh]
// event.
func (l *observedLease) Refresh(ctx context.Context, ttl time.Duration) error {
	start := time.Now()
	err := l.inner.Refresh(ctx, ttl)
	now := time.Now()
	l.scope_.Emit(ctx, l.inner.Key(), observe.Event{
		Kind: observe.KindRefresh, Outcome: outcomeOf(err), Token: l.inner.Token(),
		Latency: now.Sub(start), Hold: now.Sub(l.taken), Err: err,
	})
	return err
}

// Release calls the observed lease's and reports a [observe.KindRelease]
// event.
func (l *observedLease) Release(ctx context.Context) error {
	start := time.Now()
	err := l.inner.Release(ctx)
	l.ended(ctx, start, err)
	return err
}

// ended reports a Release or Complete that started at start.
func (l *observedLease) ended(ctx context.Context, start time.Time, err error) {
	now := time.Now()
	l.emitEnd(ctx, observe.Event{
		Kind: observe.KindRelease, Outcome: outcomeOf(err), Token: l.inner.Token(),
		Latency: now.Sub(start), Hold: now.Sub(l.taken), Err: err,
	})
}

// emitEnd reports e, a release or a loss, as the one that ends the
// holding if it is the first: to the end of the holding StartHold started,
// if any, and otherwise to the observer.
func (l *observedLease) emitEnd(ctx context.Context, e observe.Event) {
	if !l.emitEnded(ctx, e) {
		l.scope_.Emit(ctx, l.inner.Key(), e)
	}
}

// emitEnded reports e as the event that ends the holding, unless the
// holding has ended already, and reports whether it did: to the end that
// StartHold set up, if any (waiting for a StartHold under way), and
// otherwise to the observer.
func (l *observedLease) emitEnded(ctx context.Context, e observe.Event) bool {
	l.mu.Lock()
	first, end := !l.done, l.hold
	l.done = true
	l.mu.Unlock()
	if !first {
		return false
	}
	e.Ends = true
	if end != nil {
		end(ctx, e)
	} else {
		l.scope_.Emit(ctx, l.inner.Key(), e)
	}
	return true
}

// ReportLoss tells the observer of lease, a lease taken from a Locker made
// by [Observe], that its holding is over without a Release or Complete and
// outside [KeepAlive] (which reports the losses it finds itself): a
// helper found the lease not held on a call of its own, or stops renewing
// it and leaves it to expire. It reports an observe.KindLost event with
// cause as its Err, ending the holding (to the end StartHold set up, if
// any), unless the holding has ended already; for a lease that is not
// observed it does nothing. The idempotency Guard and worker call it when
// the renewal before storing a result finds the lease gone.
func ReportLoss(ctx context.Context, lease Lease, cause error) {
	ol, _ := unwrapLease(lease)
	if ol == nil {
		return
	}
	ol.emitEnded(ctx, ol.lossEvent(cause))
}

// lossEvent is the event that reports the loss of l, for cause.
func (l *observedLease) lossEvent(cause error) observe.Event {
	return observe.Event{
		Kind: observe.KindLost, Outcome: observe.NotHeld, Token: l.inner.Token(),
		Hold: time.Since(l.taken), Err: cause,
	}
}

// StartHold tells the observer of lease, a lease taken from a Locker made
// by [Observe], that work is about to run under it, and returns the
// context to run the work with; see observe.HoldScoper, whose StartHold
// it calls when the observer is one (an OpenTelemetry adapter then makes
// the work's spans children of the lease's "hold" span). [Do] calls it;
// it is exported for helpers outside this package that run work under a
// lease as Do does (the idempotency Guard and worker).
//
// Call it once per lease, right after the take and before the lease is
// handed to anything that could release it or report its loss, and derive
// the work's context, and the [KeepAlive] context, from the result. The
// holding then ends, for the observer, at the lease's first Release or
// Complete or at its loss ([KeepAlive] reports it), whichever comes
// first, as it always does; a Release, Complete or loss that ends the
// lease while the observer is starting the holding waits for it, and then
// ends it. For a lease that is not observed, whose
// observer is not a HoldScoper, that has ended already or for which
// StartHold was called before (or is being called concurrently: only one
// call starts a holding), it returns ctx and does nothing else (one
// type switch, no allocation, when not observed).
func StartHold(ctx context.Context, lease Lease) context.Context {
	ol, _ := unwrapLease(lease)
	if ol == nil || !ol.started.CompareAndSwap(false, true) {
		return ctx
	}
	ol.mu.Lock()
	defer ol.mu.Unlock()
	if ol.done {
		return ctx
	}
	hctx, end := ol.scope_.StartHold(ctx, ol.inner.Key(), observe.Event{
		Kind: observe.KindTryAcquire, Outcome: observe.Acquired, Token: ol.inner.Token(),
		Hold: time.Since(ol.taken),
	})
	if end == nil {
		return ctx
	}
	ol.hold = end
	return hctx
}

func outcomeOf(err error) observe.Outcome {
	switch {
	case err == nil:
		return observe.OK
	case errors.Is(err, ErrNotHeld):
		return observe.NotHeld
	}
	return observe.Failed
}

// observeAcquire reports the end of an Acquire that started at start, on
// an observed Locker. It runs deferred, so it sees Acquire's results, its
// attempts and its Waiter (nil if it never waited).
func observeAcquire(ctx context.Context, s *observe.Scope, key string, start time.Time, attempts *int, w **Waiter, lease *Lease, err *error) {
	e := observe.Event{Kind: observe.KindAcquire, Outcome: observe.Acquired, Wait: time.Since(start), Attempts: *attempts, Err: *err}
	if *w != nil {
		e.Wakeups = (*w).wakeups
	}
	switch {
	case *err == nil:
		e.Token = (*lease).Token()
	case ctx != nil && ctx.Err() != nil && errors.Is(*err, ErrNotAcquired):
		e.Outcome = observe.Canceled
	default:
		e.Outcome = observe.Failed
	}
	if ctx == nil {
		ctx = context.Background()
	}
	s.Emit(ctx, key, e)
}

// observeLoss reports the loss of k's lease, when it is observed, as a
// [observe.KindLost] event, before k's context is cancelled (so that
// whoever waits on it sees the event reported). The Keeper calls it once,
// for the first loss.
func observeLoss(k *Keeper, cause error) {
	ol, _ := unwrapLease(k.lease)
	if ol == nil {
		return
	}
	ol.emitEnd(k.ctx, ol.lossEvent(cause))
}

// Queue calls the observed Locker's [Queuer.Queue], or reports that it has
// none (an error matching [errors.ErrUnsupported], on which [Acquire] waits
// unqueued), so that wrapping a queued Locker keeps its waiters queued. The
// ticket's takes are reported as the Locker's are.
func (l *observedLocker) Queue(ctx context.Context, key string) (Ticket, error) {
	q, ok := l.inner.(Queuer)
	if !ok {
		return nil, fmt.Errorf("lock: %T does not queue: %w", l.inner, errors.ErrUnsupported)
	}
	t, err := q.Queue(ctx, key)
	if err != nil {
		return nil, err
	}
	return &observedTicket{Ticket: t, l: l, key: key}, nil
}

// observedTicket reports the takes of a ticket of an observed Locker.
type observedTicket struct {
	Ticket
	l   *observedLocker
	key string
}

// TryAcquire calls the ticket's and reports it as the Locker's TryAcquire.
func (t *observedTicket) TryAcquire(ctx context.Context, ttl time.Duration) (Lease, error) {
	start := time.Now()
	le, err := t.Ticket.TryAcquire(ctx, ttl)
	return t.l.taken(ctx, t.key, start, le, nil, err), err
}
