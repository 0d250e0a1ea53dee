package memlock_test

import (
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/conformance"
)

// shared is what every conformance Locker uses: memlock's locks are per
// Locker value, so "another process" is simply another handle on the same
// table. Each subtest still gets its own handle value.
func TestConformance(t *testing.T) {
	table := memlock.New()
	conformance.Run(t, conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return table },
		TTLGranularity: time.Millisecond,
	})
}

func BenchmarkConformance(b *testing.B) {
	table := memlock.New()
	conformance.Benchmark(b, conformance.Config{
		NewLockerTB:    func(testing.TB) lock.Locker { return table },
		TTLGranularity: time.Millisecond,
	})
}
