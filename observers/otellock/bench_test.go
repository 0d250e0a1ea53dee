package otellock_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/observers/otellock"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// BenchmarkOTel measures an uncontended take + release on memlock through
// lock.Acquire and lock.Do: bare, and observed by the OTel Observer with
// metrics only (WithoutSpans) and with metrics and spans (an
// SDK TracerProvider that samples everything and exports nothing). The
// difference to "bare" is what OTel observation adds per take + release.
func BenchmarkOTel(b *testing.B) {
	ctx := context.Background()
	metricsOnly := func(b *testing.B) *otellock.Observer {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() { _ = mp.Shutdown(ctx) })
		o, err := otellock.New(otellock.WithMeterProvider(mp), otellock.WithoutSpans())
		if err != nil {
			b.Fatal(err)
		}
		return o
	}
	withSpans := func(b *testing.B) *otellock.Observer {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		tp := sdktrace.NewTracerProvider()
		b.Cleanup(func() { _ = mp.Shutdown(ctx); _ = tp.Shutdown(ctx) })
		o, err := otellock.New(otellock.WithMeterProvider(mp), otellock.WithTracerProvider(tp))
		if err != nil {
			b.Fatal(err)
		}
		return o
	}
	for _, tc := range []struct {
		name string
		wrap func(b *testing.B, l lock.Locker) lock.Locker
	}{
		{"bare", func(_ *testing.B, l lock.Locker) lock.Locker { return l }},
		{"metrics", func(b *testing.B, l lock.Locker) lock.Locker { return lock.Observe(l, metricsOnly(b)) }},
		{"metrics+spans", func(b *testing.B, l lock.Locker) lock.Locker { return lock.Observe(l, withSpans(b)) }},
	} {
		b.Run(tc.name+"/Acquire", func(b *testing.B) {
			l := tc.wrap(b, memlock.New())
			b.ReportAllocs()
			for b.Loop() {
				le, err := lock.Acquire(ctx, l, "k", time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				_ = le.Release(ctx)
			}
		})
		b.Run(tc.name+"/Do", func(b *testing.B) {
			l := tc.wrap(b, memlock.New())
			fn := func(context.Context, lock.Lease) error { return nil }
			b.ReportAllocs()
			for b.Loop() {
				if err := lock.Do(ctx, l, "k", fn); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOTelMiddleware measures one guarded request (a first request:
// claim, handler, complete) on memlock, bare and observed by the OTel
// Observer: the difference is what OTel observation adds per guarded
// request.
func BenchmarkOTelMiddleware(b *testing.B) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })
	for _, tc := range []struct {
		name string
		obs  func(b *testing.B) *otellock.Observer
	}{
		{"bare", nil},
		{"metrics", func(b *testing.B) *otellock.Observer { return newBenchObserver(b, false) }},
		{"metrics+spans", func(b *testing.B) *otellock.Observer { return newBenchObserver(b, true) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var store lock.Store = memlock.New()
			if tc.obs != nil {
				store = lock.ObserveStore(store, tc.obs(b))
			}
			g, err := idempotency.New(store, idempotency.WithRetention(time.Second), idempotency.WithLogger(slog.New(slog.DiscardHandler)))
			if err != nil {
				b.Fatal(err)
			}
			h := g.Middleware(handler)
			w := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPost, "/checkout", nil)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				r.Header.Set("Idempotency-Key", "k-"+strconv.Itoa(i))
				h.ServeHTTP(w, r)
			}
		})
	}
}

func newBenchObserver(b *testing.B, spans bool) *otellock.Observer {
	ctx := context.Background()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	opts := []otellock.Option{otellock.WithMeterProvider(mp), otellock.WithoutSpans()}
	if spans {
		tp := sdktrace.NewTracerProvider()
		b.Cleanup(func() { _ = tp.Shutdown(ctx) })
		opts = []otellock.Option{otellock.WithMeterProvider(mp), otellock.WithTracerProvider(tp)}
	}
	b.Cleanup(func() { _ = mp.Shutdown(ctx) })
	o, err := otellock.New(opts...)
	if err != nil {
		b.Fatal(err)
	}
	return o
}
