package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/idemlock/lock/examples/checkout/story"
)

// TestMetricsEndpoint tells the story on mem:// with observation on and
// scrapes /metrics once: the story's takes, holds, contention and
// idempotency outcomes must be there.
func TestMetricsEndpoint(t *testing.T) {
	m, err := NewMetrics()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown(t.Context()) })
	var out bytes.Buffer
	if status := story.RunWith("mem://", false, &out, m.Wrap); status != 0 {
		t.Fatalf("the story failed with status %d:\n%s", status, out.String())
	}
	srv := httptest.NewServer(m.Handler)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	text := string(body)
	for _, want := range []string{
		"lock_hold_duration_seconds_count",
		"lock_contentions_total",
		"lock_leases_active",
		`lock_backend="memlock"`,
		// The story's double click and burst are replayed, its failing
		// charge released after its 5xx.
		`idempotency_outcome="first_run"`,
		`idempotency_outcome="replay"`,
		`idempotency_outcome="released_after_error"`,
		`lock_key_class="POST /checkout"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics has no %s:\n%s", want, text)
		}
	}
}

// TestRunServes checks the command's own wiring: it listens, tells the
// story and returns its status.
func TestRunServes(t *testing.T) {
	var out bytes.Buffer
	if status := run("mem://", "127.0.0.1:0", false, false, &out); status != 0 {
		t.Fatalf("run: status %d:\n%s", status, out.String())
	}
	if !strings.Contains(out.String(), "/metrics") {
		t.Errorf("run did not say where the metrics are:\n%s", out.String())
	}
}
