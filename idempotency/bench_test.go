package idempotency_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/testenv"
)

// nopWriter is a ResponseWriter that keeps nothing, so the benchmark
// measures the middleware and not httptest's recorder.
type nopWriter struct{ h http.Header }

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) WriteHeader(int)             {}
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkMiddleware compares the bare handler with the guarded first
// request (claim + complete on memlock) and a replay (one claim). The
// middleware's overhead is guarded minus bare. cpu-ns/op is the process's
// CPU time per request (garbage collection included), steadier than ns/op
// on a shared machine.
func BenchmarkMiddleware(b *testing.B) {
	body := `{"cart":"c-1","amount":4200}`
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/orders/1")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"order":"o-1","status":"paid"}`)
	})
	guard := func(b *testing.B, opts ...idempotency.Option) http.Handler {
		g, err := idempotency.New(memlock.New(), append([]idempotency.Option{
			idempotency.WithScope(func(r *http.Request) string { return r.Header.Get("X-User") }),
			idempotency.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		return g.Middleware(handler)
	}
	// run reuses one request, resetting its body and setting the key of
	// each iteration, so that only the handler chain is measured.
	run := func(b *testing.B, h http.Handler, keys func(n int) []string) {
		w := &nopWriter{h: http.Header{}}
		r := httptest.NewRequest(http.MethodPost, "/checkout", nil)
		r.Header.Set("X-User", "alice")
		rd := strings.NewReader(body)
		rb := io.NopCloser(rd)
		ks := keys(b.N)
		b.ReportAllocs()
		b.ResetTimer()
		cpu := testenv.ProcessCPU()
		defer func() {
			if used := testenv.ProcessCPU() - cpu; used > 0 {
				b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/op")
			}
		}()
		for i := range b.N {
			rd.Reset(body)
			r.Body = rb
			if ks != nil {
				r.Header["Idempotency-Key"] = ks[i : i+1]
			}
			clear(w.h)
			h.ServeHTTP(w, r)
		}
	}
	b.Run("bare", func(b *testing.B) {
		run(b, handler, func(int) []string { return nil })
	})
	// A first request with a new key each time. Records are kept for a
	// second, so the table stays at its steady-state size instead of
	// growing by b.N records, whose garbage-collection cost would swamp
	// the middleware's.
	b.Run("first", func(b *testing.B) {
		run(b, guard(b, idempotency.WithRetention(time.Second)), func(n int) []string {
			ks := make([]string, n)
			for i := range ks {
				ks[i] = "key-" + strconv.Itoa(i)
			}
			return ks
		})
	})
	b.Run("replay", func(b *testing.B) {
		h := guard(b)
		run(b, h, func(n int) []string {
			ks := make([]string, n)
			for i := range ks {
				ks[i] = "same"
			}
			return ks
		})
	})
}
