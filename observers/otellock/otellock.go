// Package otellock reports idemlock's events (package
// github.com/idemlock/lock/observe) as OpenTelemetry metrics and spans.
// It is a module of its own, so that the lock module keeps no third-party
// dependency.
//
// # Turning it on
//
// Make an [Observer] and wrap the Locker (or Store) with it, once; use the
// wrapped value everywhere:
//
//	obs, err := otellock.New() // the global MeterProvider and TracerProvider
//	if err != nil { ... }
//	l := lock.Observe(redislock.New(client), obs,
//		observe.WithKeyClass(observe.PrefixClass(":")))
//
// # Metrics
//
// Every metric carries lock.backend (the backend's package name) and
// lock.key.class (the key's class; see observe.WithKeyClass — never the
// key itself). For a Guard's events the class is the ServeMux pattern that
// routed the request, else the Guard's namespace.
//
//	lock.acquire.duration    histogram, s       how long lock.Acquire (and lock.Do) waited; lock.outcome = acquired | canceled | error
//	lock.contentions         counter, {attempt} takes refused because another lease held the key
//	lock.hold.duration       histogram, s       how long leases were held; lock.end = released | lost
//	lock.leases.active       updowncounter, {lease} leases taken and not yet released or lost
//	lock.refresh.duration    histogram, s       renewals' latency; lock.outcome = ok | not_held | error
//	lock.refresh.failures    counter, {refresh} renewals that failed; lock.outcome = not_held | error
//	lock.losses              counter, {lease}   leases lost while kept alive
//	idempotency.requests     counter, {request} guarded requests and worker runs; idempotency.outcome =
//	                                            first_run | replay | in_progress | fingerprint_mismatch |
//	                                            released_after_error | tombstone | store_error
//
// The README's Observability section says which alerts to set on them.
//
// # Spans
//
// Spans are children of the span in the context of the operation:
//
//   - lock.acquire: one lock.Acquire, with a "lock.wait" event (attempts
//     and wake-ups) when it had to wait, and an error status when it did
//     not acquire;
//   - lock.hold: one lease, from its take to its release or loss, with
//     lock.end (released or lost), lock.token, and an error status when
//     lost;
//   - idempotency.request: one guarded request or worker run, with its
//     outcome.
//
// The lock.hold span of a lease that lock.Do, the idempotency Guard or
// its worker run work under is live (see [Observer.StartHold]): it starts
// when the lease is taken, and the work's context carries it, so the spans
// the work makes (a query, an HTTP call) are its children. It ends when
// the lease is released (after fn returned; for a Guard, once the
// response is stored) or at the moment it is lost, which may be before
// the work's own spans end: the work went on without the lock. Every
// other span, and lock.hold of a lease the caller takes and releases
// itself, is made when an event reports the end of what it covers, with
// the start time the event implies; no span is ever made twice.
// idempotency.request stays so even around a live lock.hold (a sibling,
// not its parent): its outcome, status and error are known only at its
// end.
//
// Attributes are built only for spans that are recorded; [WithoutSpans]
// turns spans off. Metric attribute sets are built once per combination.
package otellock

import (
	"context"
	"sync"
	"time"

	"github.com/idemlock/lock/observe"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the meter and tracer.
const ScopeName = "github.com/idemlock/lock/observers/otellock"

// Attribute keys.
const (
	AttrBackend            = attribute.Key("lock.backend")
	AttrKeyClass           = attribute.Key("lock.key.class")
	AttrKey                = attribute.Key("lock.key") // only with observe.WithRawKeys
	AttrOutcome            = attribute.Key("lock.outcome")
	AttrEnd                = attribute.Key("lock.end")
	AttrToken              = attribute.Key("lock.token")
	AttrAttempts           = attribute.Key("lock.attempts")
	AttrWakeups            = attribute.Key("lock.wakeups")
	AttrIdempotencyOutcome = attribute.Key("idempotency.outcome")
	AttrHTTPStatus         = attribute.Key("http.response.status_code")
)

// Option configures [New].
type Option func(*config)

type config struct {
	mp      metric.MeterProvider
	tp      trace.TracerProvider
	noSpans bool
}

// WithMeterProvider sets the MeterProvider (default: otel.GetMeterProvider()).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(c *config) { c.mp = mp } }

// WithTracerProvider sets the TracerProvider (default:
// otel.GetTracerProvider()).
func WithTracerProvider(tp trace.TracerProvider) Option { return func(c *config) { c.tp = tp } }

// WithoutSpans makes the Observer record metrics only, which costs less
// than starting spans on a TracerProvider that drops them.
func WithoutSpans() Option { return func(c *config) { c.noSpans = true } }

// Observer is an observe.Observer that records metrics and spans. It is
// safe for concurrent use.
type Observer struct {
	tracer trace.Tracer // nil: WithoutSpans

	acquire     metric.Float64Histogram
	contentions metric.Int64Counter
	hold        metric.Float64Histogram
	active      metric.Int64UpDownCounter
	refresh     metric.Float64Histogram
	refreshFail metric.Int64Counter
	losses      metric.Int64Counter
	idem        metric.Int64Counter

	opts sync.Map // setKey -> metric.MeasurementOption: one per attribute combination, built once
}

// New returns an Observer on the providers the options name.
func New(opts ...Option) (*Observer, error) {
	c := config{}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	m := c.mp.Meter(ScopeName)
	o := &Observer{}
	if !c.noSpans {
		o.tracer = c.tp.Tracer(ScopeName)
	}
	var err error
	seconds := metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
	if o.acquire, err = m.Float64Histogram("lock.acquire.duration", metric.WithUnit("s"),
		metric.WithDescription("Time lock.Acquire spent taking a key, waiting included."), seconds); err != nil {
		return nil, err
	}
	if o.contentions, err = m.Int64Counter("lock.contentions", metric.WithUnit("{attempt}"),
		metric.WithDescription("Attempts to take a key refused because another lease held it.")); err != nil {
		return nil, err
	}
	if o.hold, err = m.Float64Histogram("lock.hold.duration", metric.WithUnit("s"),
		metric.WithDescription("Time leases were held, from take to release or loss."), seconds); err != nil {
		return nil, err
	}
	if o.active, err = m.Int64UpDownCounter("lock.leases.active", metric.WithUnit("{lease}"),
		metric.WithDescription("Leases taken and not yet released or lost.")); err != nil {
		return nil, err
	}
	if o.refresh, err = m.Float64Histogram("lock.refresh.duration", metric.WithUnit("s"),
		metric.WithDescription("Latency of lease renewals."), seconds); err != nil {
		return nil, err
	}
	if o.refreshFail, err = m.Int64Counter("lock.refresh.failures", metric.WithUnit("{refresh}"),
		metric.WithDescription("Lease renewals that failed.")); err != nil {
		return nil, err
	}
	if o.losses, err = m.Int64Counter("lock.losses", metric.WithUnit("{lease}"),
		metric.WithDescription("Leases lost while kept alive: the protected work may not have run alone.")); err != nil {
		return nil, err
	}
	if o.idem, err = m.Int64Counter("idempotency.requests", metric.WithUnit("{request}"),
		metric.WithDescription("Guarded requests and worker runs, by outcome.")); err != nil {
		return nil, err
	}
	return o, nil
}

// setKey names one attribute combination.
type setKey struct {
	backend, class string
	key            attribute.Key
	value          string
}

// set returns the measurement option of the attributes backend, class and
// (when k is not empty) k=v, built once per combination. Classes are few
// by contract (see observe.WithKeyClass), so the cache stays small.
func (o *Observer) set(e *observe.Event, k attribute.Key, v string) metric.MeasurementOption {
	sk := setKey{e.Backend, e.Class, k, v}
	if opt, ok := o.opts.Load(sk); ok {
		return opt.(metric.MeasurementOption)
	}
	kvs := []attribute.KeyValue{AttrBackend.String(e.Backend), AttrKeyClass.String(e.Class)}
	if k != "" {
		kvs = append(kvs, k.String(v))
	}
	opt := metric.WithAttributeSet(attribute.NewSet(kvs...))
	o.opts.Store(sk, opt)
	return opt
}

// Observe records e.
func (o *Observer) Observe(ctx context.Context, e observe.Event) {
	o.record(ctx, e, nil)
}

// StartHold starts the lock.hold span of a lease that lock.Do (or the
// idempotency worker or middleware) is about to run work under, at the
// time the lease was taken, and returns a context carrying it: the spans
// of the work are its children. The span is ended, with the attributes and
// status a lease's hold span always has, by the returned function, which
// lock calls (instead of Observe) with the event that ends the holding; it
// records that event's metrics as Observe would. See observe.HoldScoper.
//
// With [WithoutSpans], or when the span would not be recorded, it
// declines (a nil function), and the holding is recorded by Observe.
func (o *Observer) StartHold(ctx context.Context, e observe.Event) (context.Context, func(context.Context, observe.Event)) {
	if o.tracer == nil {
		return ctx, nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	hctx, span := o.tracer.Start(ctx, "lock.hold", trace.WithTimestamp(time.Now().Add(-e.Hold)))
	if !span.IsRecording() {
		span.End()
		return ctx, nil
	}
	span.SetAttributes(o.common(&e, AttrToken.Int64(int64(e.Token)))...)
	return hctx, func(ctx context.Context, e observe.Event) {
		o.record(ctx, e, span)
		if !e.Ends {
			span.End() // not an ending event, against the contract: end the span all the same
		}
	}
}

// record records e; hold, when not nil, is the live lock.hold span of the
// lease whose holding e ends.
func (o *Observer) record(ctx context.Context, e observe.Event, hold trace.Span) {
	if ctx == nil {
		ctx = context.Background()
	}
	now := time.Now()
	switch e.Kind {
	case observe.KindTryAcquire:
		switch e.Outcome {
		case observe.Contended:
			o.contentions.Add(ctx, 1, o.set(&e, "", ""))
		case observe.Acquired:
			o.active.Add(ctx, 1, o.set(&e, "", ""))
		}
	case observe.KindAcquire:
		o.acquire.Record(ctx, e.Wait.Seconds(), o.set(&e, AttrOutcome, string(e.Outcome)))
		o.acquireSpan(ctx, &e, now)
	case observe.KindRefresh:
		o.refresh.Record(ctx, e.Latency.Seconds(), o.set(&e, AttrOutcome, string(e.Outcome)))
		if e.Outcome != observe.OK {
			o.refreshFail.Add(ctx, 1, o.set(&e, AttrOutcome, string(e.Outcome)))
		}
	case observe.KindRelease:
		if e.Ends {
			o.ended(ctx, &e, "released", now, hold)
		}
	case observe.KindLost:
		o.losses.Add(ctx, 1, o.set(&e, "", ""))
		if e.Ends {
			o.ended(ctx, &e, "lost", now, hold)
		}
	case observe.KindIdempotency:
		o.idem.Add(ctx, 1, o.set(&e, AttrIdempotencyOutcome, string(e.Outcome)))
		o.requestSpan(ctx, &e, now)
	}
}

// ended records the end of a lease's holding: it ends span, the live
// lock.hold span StartHold started, or, when nil, makes one that began
// when the lease was taken.
func (o *Observer) ended(ctx context.Context, e *observe.Event, end string, now time.Time, span trace.Span) {
	o.active.Add(ctx, -1, o.set(e, "", ""))
	o.hold.Record(ctx, e.Hold.Seconds(), o.set(e, AttrEnd, end))
	if span == nil {
		if span = o.start(ctx, "lock.hold", now.Add(-e.Hold)); span == nil {
			return
		}
		span.SetAttributes(o.common(e, AttrEnd.String(end), AttrToken.Int64(int64(e.Token)))...)
	} else {
		span.SetAttributes(AttrEnd.String(end)) // the rest were set by StartHold
	}
	if end == "lost" {
		span.SetStatus(codes.Error, errText(e.Err))
	}
	span.End(trace.WithTimestamp(now))
}

// start starts a span that began at start, or returns nil when spans are
// off or the span would not be recorded (attributes are built only for a
// recorded span).
func (o *Observer) start(ctx context.Context, name string, start time.Time) trace.Span {
	if o.tracer == nil {
		return nil
	}
	_, span := o.tracer.Start(ctx, name, trace.WithTimestamp(start))
	if !span.IsRecording() {
		span.End()
		return nil
	}
	return span
}

func (o *Observer) acquireSpan(ctx context.Context, e *observe.Event, now time.Time) {
	start := now.Add(-e.Wait)
	span := o.start(ctx, "lock.acquire", start)
	if span == nil {
		return
	}
	span.SetAttributes(o.common(e, AttrOutcome.String(string(e.Outcome)))...)
	if e.Attempts > 1 {
		span.AddEvent("lock.wait", trace.WithTimestamp(start), trace.WithAttributes(
			AttrAttempts.Int(e.Attempts), AttrWakeups.Int(e.Wakeups)))
	}
	if e.Outcome == observe.Acquired {
		span.SetAttributes(AttrToken.Int64(int64(e.Token)))
	} else {
		span.SetStatus(codes.Error, errText(e.Err))
	}
	span.End(trace.WithTimestamp(now))
}

func (o *Observer) requestSpan(ctx context.Context, e *observe.Event, now time.Time) {
	span := o.start(ctx, "idempotency.request", now.Add(-e.Latency))
	if span == nil {
		return
	}
	span.SetAttributes(o.common(e, AttrIdempotencyOutcome.String(string(e.Outcome)))...)
	if e.Status != 0 {
		span.SetAttributes(AttrHTTPStatus.Int(e.Status))
	}
	if e.Outcome == observe.StoreError || e.Outcome == observe.Tombstone {
		span.SetStatus(codes.Error, errText(e.Err))
	}
	span.End(trace.WithTimestamp(now))
}

// common returns the attributes every span of e carries, and more.
func (o *Observer) common(e *observe.Event, more ...attribute.KeyValue) []attribute.KeyValue {
	kvs := append([]attribute.KeyValue{AttrBackend.String(e.Backend), AttrKeyClass.String(e.Class)}, more...)
	if e.Key != "" {
		kvs = append(kvs, AttrKey.String(e.Key))
	}
	return kvs
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
