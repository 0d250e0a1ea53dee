package pglock_test

import (
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/pglock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
)

func TestConformance(t *testing.T) {
	url := postgresURL(t)
	conformance.Run(t, conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { l, _ := newLockerOn(t, url); return l },
		TTLGranularity: time.Millisecond,
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			l, w := newLockerOn(t, url)
			return l, w
		},
	})
}

func TestStoreConformance(t *testing.T) {
	url := postgresURL(t)
	conformance.RunStore(t, conformance.StoreConfig{
		NewStore:       func(t *testing.T) idempotency.Store { l, _ := newLockerOn(t, url); return l },
		TTLGranularity: time.Millisecond,
		NewFaultyStore: func(t *testing.T) (idempotency.Store, conformance.Faults) {
			l, w := newLockerOn(t, url)
			return l, w
		},
	})
}

// TestConformanceQueued runs the suite on queued Lockers (WithQueue): the
// whole suite, queue clauses included, through tickets.
func TestConformanceQueued(t *testing.T) {
	url := postgresURL(t)
	conformance.Run(t, conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { l, _ := newLockerOn(t, url, pglock.WithQueue()); return l },
		TTLGranularity: time.Millisecond,
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			l, w := newLockerOn(t, url, pglock.WithQueue())
			return l, w
		},
	})
}

// TestStoreConformanceQueued runs the store suite on queued Lockers: their
// releases are the queued statement.
func TestStoreConformanceQueued(t *testing.T) {
	url := postgresURL(t)
	conformance.RunStore(t, conformance.StoreConfig{
		NewStore:       func(t *testing.T) idempotency.Store { l, _ := newLockerOn(t, url, pglock.WithQueue()); return l },
		TTLGranularity: time.Millisecond,
		NewFaultyStore: func(t *testing.T) (idempotency.Store, conformance.Faults) {
			l, w := newLockerOn(t, url, pglock.WithQueue())
			return l, w
		},
	})
}
