package lock_test

import (
	"context"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/internal/testenv"
)

// BenchmarkHelpers measures an uncontended take + release on memlock
// through each helper, with no observer: the cost observation must not
// change when it is off (compare with benchstat against the parent
// commit; BenchmarkObserved reports the cost when it is on).
func BenchmarkHelpers(b *testing.B) {
	benchHelpers(b, memlock.New())
}

func benchHelpers(b *testing.B, l lock.Locker) {
	ctx := context.Background()
	b.Run("TryAcquire", func(b *testing.B) {
		defer cpuPerOp(b)()
		for b.Loop() {
			le, err := l.TryAcquire(ctx, "k", time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			_ = le.Release(ctx)
		}
	})
	b.Run("Acquire", func(b *testing.B) {
		defer cpuPerOp(b)()
		for b.Loop() {
			le, err := lock.Acquire(ctx, l, "k", time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			_ = le.Release(ctx)
		}
	})
	b.Run("Do", func(b *testing.B) {
		defer cpuPerOp(b)()
		fn := func(context.Context, lock.Lease) error { return nil }
		for b.Loop() {
			if err := lock.Do(ctx, l, "k", fn); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// cpuPerOp reports allocations and, when the returned function runs at the
// end of the benchmark, the process's CPU time per operation (cpu-ns/op):
// on a shared machine it measures the work better than the wall clock,
// which also counts the time other processes ran.
func cpuPerOp(b *testing.B) func() {
	b.ReportAllocs()
	start := testenv.ProcessCPU()
	return func() {
		if used := testenv.ProcessCPU() - start; used > 0 && b.N > 0 {
			b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/op")
		}
	}
}
