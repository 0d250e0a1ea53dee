package main

import (
	"fmt"
	"strings"
	"testing"
)

// A one-hand-off Scaling benchmark is reported from go test's calibration
// run (b.N == 1), which skips the quiescence and the warm-up: go test
// -benchtime=1x printed warmup-handoffs 0 for redis/idemlock-queued at 8
// waiters, 8 at 5x. The report refuses it.
func TestScalingHandoffsAtLeastTwo(t *testing.T) {
	for n, ok := range map[int]bool{0: false, 1: false, 2: true, 60: true} {
		if err := checkScalingHandoffs(n); (err == nil) != ok {
			t.Errorf("checkScalingHandoffs(%d) = %v, want ok %v", n, err, ok)
		}
	}
}

// The scaling table's measured column shows the hand-offs a run measured
// (handoffs, more than go test's iterations when the window had to span
// the backend's background period), and the text says how the window
// ends; results from before that rule render as they did, with go test's
// iterations as the count.
func TestScalingMeasuredHandoffs(t *testing.T) {
	const line = "BenchmarkScaling8/backend=etcd/lib=idemlock-queued-2  60  0.06 acq-cv  0.875 acq-min/max  4000000 ns/handoff-p50  9000000 ns/handoff-p99  3.01 req/handoff  8 warmup-handoffs%s\n"
	for _, tc := range []struct {
		extra, row, text string
	}{
		{"  420 handoffs", "| 3.01 | 4.00 ms | 9.00 ms | 0.06, 0.88 | 8 | 420 |", "at least 60, and on a backend"},
		{"", "| 3.01 | 4.00 ms | 9.00 ms | 0.06, 0.88 | 8 | 60 |", "Then 60 hand-offs are measured"},
	} {
		res, err := parse(strings.NewReader("round: 1\n" + fmt.Sprintf(line, tc.extra)))
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		res.scalingSection(&b)
		if md := b.String(); !strings.Contains(md, "| etcd | idemlock-queued | 8 "+tc.row) || !strings.Contains(md, tc.text) {
			t.Errorf("with %q the scaling section lacks %q or %q:\n%s", tc.extra, tc.row, tc.text, md)
		}
	}
}
