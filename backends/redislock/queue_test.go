package redislock_test

import (
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/conformance"
)

// queuedConfig is the conformance configuration of queued Lockers
// (WithQueue): the whole suite, queue clauses included, through tickets.
func (tp topology) queuedConfig() conformance.Config {
	return conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return tp.newLocker(t, nil, redislock.WithQueue()) },
		NewLockerTB:    func(tb testing.TB) lock.Locker { return tp.newLocker(tb, nil, redislock.WithQueue()) },
		TTLGranularity: time.Millisecond,
		NewFaultyLocker: func(t *testing.T) (lock.Locker, conformance.Faults) {
			return tp.newFaultyLocker(t, redislock.WithQueue())
		},
	}
}

func TestConformanceQueued(t *testing.T) { conformance.Run(t, single.queuedConfig()) }

func TestConformanceQueuedCluster(t *testing.T) { conformance.Run(t, cluster.queuedConfig()) }
