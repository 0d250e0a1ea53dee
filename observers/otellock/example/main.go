// Command example tells the checkout story (examples/checkout) with
// OpenTelemetry observation turned on, and serves its metrics in the
// Prometheus text format on /metrics through OTel's Prometheus exporter:
//
//	cd observers/otellock
//	go run ./example                                   # mem://, metrics on 127.0.0.1:9464
//	go run ./example -backend redis://127.0.0.1:6379/0
//	curl -s 127.0.0.1:9464/metrics | grep -E '^(lock|idempotency)_'
//
// The story runs once; the command then keeps serving /metrics until it
// is interrupted (-serve=false exits instead). The story's own status is
// the exit status.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"

	"github.com/idemlock/lock"
	_ "github.com/idemlock/lock/backends/memlock"
	_ "github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/examples/checkout/story"
	"github.com/idemlock/lock/observers/otellock"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

func main() {
	backend := flag.String("backend", "mem://", "lock backend URL")
	addr := flag.String("addr", "127.0.0.1:9464", "address of the /metrics endpoint")
	serve := flag.Bool("serve", true, "keep serving /metrics after the story")
	verbose := flag.Bool("v", false, "print every request and response")
	flag.Parse()
	os.Exit(run(*backend, *addr, *serve, *verbose, os.Stdout))
}

// Metrics is the observation set-up of the example: an Observer whose
// metrics a Prometheus registry of its own exposes.
type Metrics struct {
	Observer *otellock.Observer
	Handler  http.Handler // serves the registry in the Prometheus text format
	provider *sdkmetric.MeterProvider
}

// NewMetrics builds the Observer on a MeterProvider read by OTel's
// Prometheus exporter, registered in a registry of its own.
func NewMetrics() (*Metrics, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	obs, err := otellock.New(otellock.WithMeterProvider(mp))
	if err != nil {
		return nil, err
	}
	return &Metrics{Observer: obs, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), provider: mp}, nil
}

// Shutdown stops the MeterProvider.
func (m *Metrics) Shutdown(ctx context.Context) error { return m.provider.Shutdown(ctx) }

// Wrap is the one line that turns observation on: the story's Store,
// observed.
func (m *Metrics) Wrap(s lock.Store) lock.Store { return lock.ObserveStore(s, m.Observer) }

func run(backend, addr string, serve, verbose bool, out io.Writer) int {
	m, err := NewMetrics()
	if err != nil {
		fmt.Fprintf(out, "example: %v\n", err)
		return 2
	}
	defer func() { _ = m.Shutdown(context.Background()) }()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(out, "example: %v\n", err)
		return 2
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler)
	srv := &http.Server{Handler: mux}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(out, "example: %v\n", err)
		}
	}()
	defer srv.Close()
	fmt.Fprintf(out, "metrics on http://%s/metrics\n\n", ln.Addr())

	status := story.RunWith(backend, verbose, out, m.Wrap)
	if serve {
		fmt.Fprintf(out, "\nserving http://%s/metrics until interrupted\n", ln.Addr())
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		<-ctx.Done()
	}
	return status
}
