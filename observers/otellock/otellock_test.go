package otellock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/idemlock/lock/observe"
	"github.com/idemlock/lock/observers/otellock"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// harness is an Observer on in-memory SDK readers and exporters.
type harness struct {
	obs    *otellock.Observer
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
}

func newHarness(t *testing.T) *harness {
	h := &harness{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	h.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()); _ = h.tp.Shutdown(context.Background()) })
	var err error
	if h.obs, err = otellock.New(otellock.WithMeterProvider(mp), otellock.WithTracerProvider(h.tp)); err != nil {
		t.Fatal(err)
	}
	return h
}

// point is one data point: its attributes and its value (a sum, or a
// histogram's count).
type point struct {
	attrs attribute.Set
	value int64
	sum   float64
}

func (h *harness) points(t *testing.T, name string) []point {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var out []point
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					out = append(out, point{attrs: dp.Attributes, value: dp.Value})
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					out = append(out, point{attrs: dp.Attributes, value: int64(dp.Count), sum: dp.Sum})
				}
			default:
				t.Fatalf("metric %s has data of type %T", name, m.Data)
			}
		}
	}
	return out
}

// value sums the points of name whose attributes include want.
func (h *harness) value(t *testing.T, name string, want ...attribute.KeyValue) int64 {
	t.Helper()
	var n int64
	for _, p := range h.points(t, name) {
		ok := true
		for _, kv := range want {
			if v, found := p.attrs.Value(kv.Key); !found || v != kv.Value {
				ok = false
			}
		}
		if ok {
			n += p.value
		}
	}
	return n
}

func (h *harness) span(t *testing.T, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	found := h.spansNamed(name)
	if len(found) == 0 {
		t.Fatalf("no %s span among %d", name, len(h.spans.Ended()))
	}
	return found[len(found)-1]
}

func TestMemlock(t *testing.T) {
	table := memlock.New()
	testBackend(t, table, table, "memlock")
}

func TestRedis(t *testing.T) {
	l := redisLocker(t, "otellock-test")
	testBackend(t, l, l, "redislock")
}

// redisLocker returns a Locker on the shared Redis whose keys start with
// prefix and the time, closed with the test.
func redisLocker(t *testing.T, prefix string) *redislock.Locker {
	client := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
	t.Cleanup(func() { _ = client.Close() })
	l, err := redislock.New(client, redislock.WithPrefix(fmt.Sprintf("%s-%d:", prefix, time.Now().UnixNano())))
	if err != nil {
		t.Fatalf("redislock.New: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// testBackend drives every lock event through l, observed, and checks the
// metrics and spans; admin ends a lease from outside.
func testBackend(t *testing.T, l lock.Locker, admin lock.Admin, backend string) {
	ctx := t.Context()
	h := newHarness(t)
	ol := lock.Observe(l, h.obs, observe.WithKeyClass(observe.PrefixClass(":")))
	cls := otellock.AttrKeyClass.String("orders")
	be := otellock.AttrBackend.String(backend)

	// An uncontended Do under a parent span: one acquire, one hold.
	parentCtx, parent := h.tp.Tracer("test").Start(ctx, "parent")
	if err := lock.Do(parentCtx, ol, "orders:1", func(context.Context, lock.Lease) error { return nil }, lock.WithTTL(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	parent.End()
	if n := h.value(t, "lock.acquire.duration", be, cls, otellock.AttrOutcome.String("acquired")); n != 1 {
		t.Errorf("lock.acquire.duration acquired count %d, want 1", n)
	}
	if n := h.value(t, "lock.hold.duration", be, cls, otellock.AttrEnd.String("released")); n != 1 {
		t.Errorf("lock.hold.duration released count %d, want 1", n)
	}
	if n := h.value(t, "lock.leases.active", be, cls); n != 0 {
		t.Errorf("lock.leases.active %d after release, want 0", n)
	}
	acq := h.span(t, "lock.acquire")
	if acq.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("lock.acquire span's parent %v, want the caller's span %v", acq.Parent().SpanID(), parent.SpanContext().SpanID())
	}
	if h.span(t, "lock.hold").Status().Code == codes.Error {
		t.Error("released lease's hold span has an error status")
	}

	// Contention: a held key, an Acquire that gives up.
	holder, err := ol.TryAcquire(ctx, "orders:2", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if n := h.value(t, "lock.leases.active", be, cls); n != 1 {
		t.Errorf("lock.leases.active %d while one lease is held, want 1", n)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	deadline, _ := short.Deadline()
	_, err = lock.Acquire(short, ol, "orders:2", 5*time.Second)
	cancel()
	if !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("Acquire of a held key: %v", err)
	}
	// At least the first attempt was refused (a slow subscription on a
	// loaded machine may outlast the context before the second).
	if n := h.value(t, "lock.contentions", be, cls); n < 1 {
		t.Errorf("lock.contentions %d, want at least 1", n)
	}
	if n := h.value(t, "lock.acquire.duration", be, cls, otellock.AttrOutcome.String("canceled")); n != 1 {
		t.Errorf("lock.acquire.duration canceled count %d, want 1", n)
	}
	waited := h.span(t, "lock.acquire")
	if waited.Status().Code != codes.Error || len(waited.Events()) == 0 || waited.Events()[0].Name != "lock.wait" {
		t.Errorf("acquire span that waited and gave up: status %v, events %v; want an error and a lock.wait event", waited.Status(), waited.Events())
	}
	// The span covers the wait until the context's end, not only an
	// attempt. (Not judged by its length: a loaded machine may start
	// Acquire well into the context's 100ms.)
	if end := waited.EndTime(); end.Before(deadline) {
		t.Errorf("acquire span ends %v before the context's deadline, want it to cover the wait until then", deadline.Sub(end))
	}

	// A loss while kept alive, and a refresh that finds the lease gone.
	k, err := lock.KeepAlive(ctx, holder, 5*time.Second, lock.WithRefreshInterval(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.ForceRelease(ctx, "orders:2"); err != nil {
		t.Fatal(err)
	}
	<-k.Context().Done()
	k.Stop()
	if !k.Lost() {
		t.Fatalf("keeper ended with %v, want a loss", k.Err())
	}
	if n := h.value(t, "lock.losses", be, cls); n != 1 {
		t.Errorf("lock.losses %d, want 1", n)
	}
	if n := h.value(t, "lock.hold.duration", be, cls, otellock.AttrEnd.String("lost")); n != 1 {
		t.Errorf("lock.hold.duration lost count %d, want 1", n)
	}
	if n := h.value(t, "lock.leases.active", be, cls); n != 0 {
		t.Errorf("lock.leases.active %d after the loss, want 0", n)
	}
	if s := h.span(t, "lock.hold"); s.Status().Code != codes.Error {
		t.Errorf("lost lease's hold span status %v, want an error", s.Status())
	}
	if err := holder.Refresh(ctx, 5*time.Second); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("refresh of a lost lease: %v", err)
	}
	if n := h.value(t, "lock.refresh.failures", be, cls, otellock.AttrOutcome.String("not_held")); n < 1 {
		t.Errorf("lock.refresh.failures not_held %d, want at least 1", n)
	}
	if n := h.value(t, "lock.refresh.duration", be, cls); n < 1 {
		t.Errorf("lock.refresh.duration count %d, want at least 1", n)
	}
}

// TestIdempotencyEvent checks the counter and span of an idempotency event
// as the Guard reports it.
func TestIdempotencyEvent(t *testing.T) {
	h := newHarness(t)
	for _, out := range []observe.Outcome{observe.FirstRun, observe.Replay, observe.Replay, observe.StoreError} {
		h.obs.Observe(t.Context(), observe.Event{Kind: observe.KindIdempotency, Outcome: out, Backend: "memlock", Class: "checkout", Status: 201, Latency: time.Millisecond})
	}
	if n := h.value(t, "idempotency.requests", otellock.AttrIdempotencyOutcome.String("replay"), otellock.AttrKeyClass.String("checkout")); n != 2 {
		t.Errorf("idempotency.requests replay %d, want 2", n)
	}
	s := h.span(t, "idempotency.request")
	if s.Status().Code != codes.Error {
		t.Errorf("store error span status %v, want an error", s.Status())
	}
	if d := s.EndTime().Sub(s.StartTime()); d != time.Millisecond {
		t.Errorf("request span lasts %v, want the event's 1ms", d)
	}
}
