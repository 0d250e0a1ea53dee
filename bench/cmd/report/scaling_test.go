package main

import "testing"

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
