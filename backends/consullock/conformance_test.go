package consullock_test

import (
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
)

// suiteConfig describes the test agent: session_ttl_min 1s, TTLs in whole
// seconds, sessions invalidated up to twice their TTL late (one more TTL
// of the suite's 1s short TTL).
func suiteConfig() conformance.Config {
	return conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { l, _ := newLocker(t); return l },
		NewLockerTB:    func(tb testing.TB) lock.Locker { l, _ := newLocker(tb); return l },
		TTLGranularity: time.Second,
		MinTTL:         time.Second,
		ExpirySlack:    time.Second,
		RoundTrips:     requests.Load,
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			l, faults, _ := newFaultyLocker(t)
			return l, faults
		},
	}
}

func TestConformance(t *testing.T) {
	checkNoSessions(t)
	conformance.Run(t, suiteConfig())
}

func BenchmarkConformance(b *testing.B) {
	conformance.Benchmark(b, suiteConfig())
}

func TestStoreConformance(t *testing.T) {
	checkNoSessions(t)
	conformance.RunStore(t, conformance.StoreConfig{
		NewStore:       func(t *testing.T) idempotency.Store { l, _ := newLocker(t); return l },
		TTLGranularity: time.Second,
		MinTTL:         time.Second,
		ExpirySlack:    time.Second,
		NewFaultyStore: func(t *testing.T) (idempotency.Store, conformance.Faults) {
			l, faults, _ := newFaultyLocker(t)
			return l, faults
		},
	})
}
