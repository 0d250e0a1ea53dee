package otellock_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/observe"
	"github.com/idemlock/lock/observers/otellock"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// spansNamed returns the ended spans called name.
func (h *harness) spansNamed(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range h.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// attr returns the value of the span's attribute k, and whether it has it.
func attr(s sdktrace.ReadOnlySpan, k attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// testDoHold runs lock.Do on l, observed, under a parent span, with an fn
// that makes a span of its own, released (lost, when admin is given: fn
// force-releases the key and waits for the loss), and checks that fn's
// span is a child of the one lock.hold span, which a child of the parent,
// covers the take to the release or loss with the attributes and status
// of a hold span.
func testDoHold(t *testing.T, l lock.Locker, admin lock.Admin, backend, key string) {
	ctx := t.Context()
	h := newHarness(t)
	ol := lock.Observe(l, h.obs, observe.WithKeyClass(observe.PrefixClass(":")))
	end := "released"
	if admin != nil {
		end = "lost"
	}
	parentCtx, parent := h.tp.Tracer("test").Start(ctx, "parent")
	before := time.Now()
	var token uint64
	var inFn, sawLoss time.Time
	err := lock.Do(parentCtx, ol, key, func(ctx context.Context, le lock.Lease) error {
		inFn, token = time.Now(), le.Token()
		_, work := h.tp.Tracer("test").Start(ctx, "work")
		defer work.End()
		if admin == nil {
			return nil
		}
		if err := admin.ForceRelease(ctx, key); err != nil {
			return err
		}
		<-ctx.Done()
		sawLoss = time.Now()
		return nil
	}, lock.WithTTL(5*time.Second), lock.WithRefreshInterval(50*time.Millisecond))
	after := time.Now()
	parent.End()
	if admin == nil && err != nil || admin != nil && !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("Do: %v (want a loss: %v)", err, admin != nil)
	}

	holds := h.spansNamed("lock.hold")
	if len(holds) != 1 {
		t.Fatalf("%d lock.hold spans, want 1", len(holds))
	}
	hold, work := holds[0], h.span(t, "work")
	if work.Parent().SpanID() != hold.SpanContext().SpanID() {
		t.Errorf("fn's span's parent %v, want the lock.hold span %v", work.Parent().SpanID(), hold.SpanContext().SpanID())
	}
	if hold.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("lock.hold's parent %v, want the caller's span %v", hold.Parent().SpanID(), parent.SpanContext().SpanID())
	}
	if acq := h.span(t, "lock.acquire"); acq.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("lock.acquire's parent %v, want the caller's span", acq.Parent().SpanID())
	}
	if hold.StartTime().Before(before) || hold.StartTime().After(inFn) {
		t.Errorf("lock.hold starts at %v, want the take's time, between Do's call %v and fn's start %v", hold.StartTime(), before, inFn)
	}
	switch {
	case end == "released" && (hold.EndTime().Before(work.EndTime()) || hold.EndTime().After(after)):
		t.Errorf("lock.hold ends at %v, want after fn's span ended (%v) and before Do returned (%v)", hold.EndTime(), work.EndTime(), after)
	case end == "lost" && (hold.EndTime().Before(inFn) || hold.EndTime().After(sawLoss)):
		// The loss ends the holding before fn's context is cancelled: the
		// hold span ends while fn's span, which outlives the lock, is open.
		t.Errorf("lock.hold ends at %v, want at the loss, after fn started (%v) and before fn saw its context end (%v)", hold.EndTime(), inFn, sawLoss)
	}
	for k, want := range map[attribute.Key]attribute.Value{
		otellock.AttrEnd:      attribute.StringValue(end),
		otellock.AttrToken:    attribute.Int64Value(int64(token)),
		otellock.AttrBackend:  attribute.StringValue(backend),
		otellock.AttrKeyClass: attribute.StringValue("orders"),
	} {
		if v, ok := attr(hold, k); !ok || v != want {
			t.Errorf("lock.hold's %s = %v (set: %v), want %v", k, v.String(), ok, want.String())
		}
	}
	if _, ok := attr(hold, otellock.AttrKey); ok {
		t.Error("lock.hold carries the key without WithRawKeys")
	}
	if got := hold.Status().Code; (end == "lost") != (got == codes.Error) {
		t.Errorf("lock.hold's status %v for a lease %s", hold.Status(), end)
	}
	if end == "lost" && !strings.Contains(hold.Status().Description, "lease lost") {
		t.Errorf("lost lease's hold status %q, want the loss's cause", hold.Status().Description)
	}

	be, cls := otellock.AttrBackend.String(backend), otellock.AttrKeyClass.String("orders")
	if n := h.value(t, "lock.hold.duration", be, cls, otellock.AttrEnd.String(end)); n != 1 {
		t.Errorf("lock.hold.duration %s count %d, want 1", end, n)
	}
	if n := h.value(t, "lock.leases.active", be, cls); n != 0 {
		t.Errorf("lock.leases.active %d after Do, want 0", n)
	}
	wantLosses := int64(0)
	if end == "lost" {
		wantLosses = 1
	}
	if n := h.value(t, "lock.losses", be, cls); n != wantLosses {
		t.Errorf("lock.losses %d, want %d", n, wantLosses)
	}
}

// TestDoHoldMemlock: with memlock, fn's spans are children of lock.hold,
// for a lease released and for one lost.
func TestDoHoldMemlock(t *testing.T) {
	table := memlock.New()
	t.Run("released", func(t *testing.T) { testDoHold(t, table, nil, "memlock", "orders:1") })
	t.Run("lost", func(t *testing.T) { testDoHold(t, table, table, "memlock", "orders:2") })
}

// TestDoHoldRedis is TestDoHoldMemlock on the shared Redis.
func TestDoHoldRedis(t *testing.T) {
	l := redisLocker(t, "otellock-hold-test")
	t.Run("released", func(t *testing.T) { testDoHold(t, l, nil, "redislock", "orders:1") })
	t.Run("lost", func(t *testing.T) { testDoHold(t, l, l, "redislock", "orders:2") })
}

// TestHoldWithoutLiveSpan: an Observer with spans off, or whose spans are
// not sampled, still records a Do's holding in its metrics, and fn's
// context carries no span of its own.
func TestHoldWithoutLiveSpan(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name string
		opts func(tp trace.TracerProvider) []otellock.Option
	}{
		{"without-spans", func(trace.TracerProvider) []otellock.Option { return []otellock.Option{otellock.WithoutSpans()} }},
		{"not-sampled", func(trace.TracerProvider) []otellock.Option { return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			spans := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans), sdktrace.WithSampler(sdktrace.NeverSample()))
			t.Cleanup(func() { _ = mp.Shutdown(ctx); _ = tp.Shutdown(ctx) })
			obs, err := otellock.New(append([]otellock.Option{otellock.WithMeterProvider(mp), otellock.WithTracerProvider(tp)}, tc.opts(tp)...)...)
			if err != nil {
				t.Fatal(err)
			}
			h := &harness{obs: obs, reader: reader, spans: spans, tp: tp}
			l := lock.Observe(memlock.New(), obs)
			err = lock.Do(ctx, l, "k", func(ctx context.Context, _ lock.Lease) error {
				if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
					t.Errorf("fn's context carries a span %v", sc.SpanID())
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if n := h.value(t, "lock.hold.duration", otellock.AttrEnd.String("released")); n != 1 {
				t.Errorf("lock.hold.duration released count %d, want 1", n)
			}
			if n := h.value(t, "lock.leases.active"); n != 0 {
				t.Errorf("lock.leases.active %d after Do, want 0", n)
			}
			if n := len(spans.Ended()); n != 0 {
				t.Errorf("%d spans recorded, want none", n)
			}
		})
	}
}

// TestIdempotencyHold: the handler a Guard runs, and the function of the
// worker Do, run inside the claimed lease's lock.hold span, which ends at
// the Complete (released) or, for work that fails, at the release; the
// idempotency.request span stays retroactive, beside it.
func TestIdempotencyHold(t *testing.T) {
	ctx := t.Context()
	h := newHarness(t)
	store := lock.ObserveStore(memlock.New(), h.obs)
	g, err := idempotency.New(store, idempotency.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	tracer := h.tp.Tracer("test")
	handler := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, span := tracer.Start(r.Context(), "handler")
		defer span.End()
		if r.Header.Get("X-Fail") != "" {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	worker := func(ctx context.Context) (int, error) {
		_, span := tracer.Start(ctx, "handler")
		defer span.End()
		return 1, nil
	}
	for _, tc := range []struct {
		name string
		run  func(ctx context.Context)
	}{
		{"middleware", func(ctx context.Context) {
			r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/checkout", nil)
			r.Header.Set("Idempotency-Key", "k-1")
			handler.ServeHTTP(httptest.NewRecorder(), r)
		}},
		{"middleware-fails", func(ctx context.Context) {
			r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/checkout", nil)
			r.Header.Set("Idempotency-Key", "k-2")
			r.Header.Set("X-Fail", "1")
			handler.ServeHTTP(httptest.NewRecorder(), r)
		}},
		{"worker", func(ctx context.Context) {
			if _, err := idempotency.Do(ctx, g, "k-3", worker); err != nil {
				t.Error(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.spans = tracetest.NewSpanRecorder()
			h.tp.RegisterSpanProcessor(h.spans)
			defer h.tp.UnregisterSpanProcessor(h.spans)
			pctx, parent := tracer.Start(ctx, "parent")
			tc.run(pctx)
			parent.End()
			holds := h.spansNamed("lock.hold")
			if len(holds) != 1 {
				t.Fatalf("%d lock.hold spans, want 1", len(holds))
			}
			hold, work, req := holds[0], h.span(t, "handler"), h.span(t, "idempotency.request")
			if work.Parent().SpanID() != hold.SpanContext().SpanID() {
				t.Errorf("the work's span's parent %v, want lock.hold %v", work.Parent().SpanID(), hold.SpanContext().SpanID())
			}
			if hold.Parent().SpanID() != parent.SpanContext().SpanID() || req.Parent().SpanID() != parent.SpanContext().SpanID() {
				t.Errorf("lock.hold's parent %v and idempotency.request's %v, want the caller's span %v", hold.Parent().SpanID(), req.Parent().SpanID(), parent.SpanContext().SpanID())
			}
			if hold.EndTime().Before(work.EndTime()) || hold.StartTime().After(work.StartTime()) {
				t.Errorf("lock.hold [%v, %v] does not cover the work [%v, %v]", hold.StartTime(), hold.EndTime(), work.StartTime(), work.EndTime())
			}
			if v, _ := attr(hold, otellock.AttrEnd); v.AsString() != "released" || hold.Status().Code == codes.Error {
				t.Errorf("lock.hold's lock.end %q, status %v; want released, no error", v.AsString(), hold.Status())
			}
		})
	}
	if n := h.value(t, "lock.leases.active"); n != 0 {
		t.Errorf("lock.leases.active %d after the requests, want 0", n)
	}
	if n := h.value(t, "lock.hold.duration", otellock.AttrEnd.String("released")); n != 3 {
		t.Errorf("lock.hold.duration released count %d, want 3", n)
	}
}
