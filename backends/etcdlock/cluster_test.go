package etcdlock_test

import (
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/faults"
	"github.com/idemlock/lock/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestClusterTopology runs both suites on the 3-member etcd cluster, each
// Locker with a client of its own that reaches every member through a
// proxy, with no faults: the contract holds when requests go to followers
// and watches and leases span members.
func TestClusterTopology(t *testing.T) {
	tp := faults.Shared(t, testenv.EtcdCluster)
	newLocker := func(tb testing.TB) *etcdlock.Locker {
		tb.Helper()
		n := tp.Net(tb)
		cli, err := clientv3.New(clientv3.Config{Endpoints: n.Addrs(tp.Addrs()), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			tb.Fatalf("clientv3.New: %v", err)
		}
		tb.Cleanup(func() { _ = cli.Close() })
		l := mustNew(tb, cli)
		tb.Cleanup(func() {
			if err := l.Close(); err != nil {
				tb.Errorf("Locker.Close: %v", err)
			}
		})
		return l
	}
	t.Run("Conformance", func(t *testing.T) {
		conformance.Run(t, conformance.Config{
			NewLocker:      func(t *testing.T) lock.Locker { return newLocker(t) },
			TTLGranularity: granularity,
			MinTTL:         minTTL,
			ExpirySlack:    expirySlack,
		})
	})
	t.Run("Store", func(t *testing.T) {
		conformance.RunStore(t, conformance.StoreConfig{
			NewStore:       func(t *testing.T) idempotency.Store { return newLocker(t) },
			TTLGranularity: granularity,
			MinTTL:         minTTL,
			ExpirySlack:    expirySlack,
		})
	})
	if unused := tp.Unused(tp.Addrs()); len(unused) > 0 {
		t.Errorf("no connection went to members %v through their proxies", unused)
	}
}
