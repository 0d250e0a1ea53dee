package bench

import (
	"strconv"
	"testing"
)

// BenchmarkScaling8, 64 and 512: the Handoff workload with that many
// waiters on one key sharing 8 clients (ns/handoff-p50, -p99, acq-cv,
// acq-min/max, req/handoff).
func BenchmarkScaling8(b *testing.B)   { benchScaling(b, 8) }
func BenchmarkScaling64(b *testing.B)  { benchScaling(b, 64) }
func BenchmarkScaling512(b *testing.B) { benchScaling(b, 512) }

func benchScaling(b *testing.B, waiters int) {
	forEach(b, "scaling"+strconv.Itoa(waiters), Scales, func(b *testing.B, be Backend, lib Lib, env Env, prefix string) {
		Scaling(b, be, lib, env, prefix, waiters)
	})
}
