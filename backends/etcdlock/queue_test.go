package etcdlock_test

import (
	"testing"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/conformance"
)

// The whole suite, queue clauses included, through queued Lockers.
func TestConformanceQueued(t *testing.T) {
	conformance.Run(t, conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return newLocker(t, nil, etcdlock.WithQueue()) },
		TTLGranularity: granularity,
		MinTTL:         minTTL,
		ExpirySlack:    expirySlack,
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			return newFaultyLocker(t, etcdlock.WithQueue())
		},
	})
}
