package consullock_test

import (
	"testing"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/consullock"
	"github.com/idemlock/lock/conformance"
)

// TestConformanceQueued runs the suite on Lockers that queue their waiters:
// the queue clauses (QueueOrder, QueueHeadGivesUp) run instead of skipping.
func TestConformanceQueued(t *testing.T) {
	checkNoSessions(t)
	cfg := suiteConfig()
	cfg.NewLocker = func(t *testing.T) lock.Locker { l, _ := newLocker(t, consullock.WithQueue()); return l }
	cfg.NewLockerTB = func(tb testing.TB) lock.Locker { l, _ := newLocker(tb, consullock.WithQueue()); return l }
	cfg.NewFaultyLocker = func(t *testing.T) (lock.Locker, conformance.Faults) {
		l, faults, _ := newFaultyLocker(t, consullock.WithQueue())
		return l, faults
	}
	conformance.Run(t, cfg)
}
