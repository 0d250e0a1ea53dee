package consullock_test

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/consullock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/faults"
	"github.com/idemlock/lock/internal/testenv"
)

// TestClusterTopology runs both suites on the Consul cluster: 3 servers in
// server mode (Raft on disk, session_ttl_min 1s) and the client agent the
// Lockers talk to, each through a proxy of its own, with no faults. Every
// request is forwarded by the agent to the leader, blocking queries
// included.
func TestClusterTopology(t *testing.T) {
	tp := faults.Shared(t, testenv.ConsulCluster)
	newLocker := func(tb testing.TB) *consullock.Locker {
		tb.Helper()
		n := tp.Net(tb)
		cfg := api.DefaultConfig()
		cfg.Address, cfg.Scheme, cfg.Token, cfg.TokenFile = n.Addr(tp.Addrs()[0]), "http", "", ""
		tb.Cleanup(cfg.Transport.CloseIdleConnections)
		client, err := api.NewClient(cfg)
		if err != nil {
			tb.Fatalf("consul client: %v", err)
		}
		l, err := consullock.New(client, consullock.WithMinTTL(time.Second))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() {
			if err := l.Close(); err != nil {
				tb.Errorf("Close: %v", err)
			}
		})
		return l
	}
	// As on the single agent: TTLs in whole seconds, sessions invalidated
	// up to twice their TTL late.
	t.Run("Conformance", func(t *testing.T) {
		conformance.Run(t, conformance.Config{
			NewLocker:      func(t *testing.T) lock.Locker { return newLocker(t) },
			TTLGranularity: time.Second,
			MinTTL:         time.Second,
			ExpirySlack:    time.Second,
		})
	})
	t.Run("Store", func(t *testing.T) {
		conformance.RunStore(t, conformance.StoreConfig{
			NewStore:       func(t *testing.T) idempotency.Store { return newLocker(t) },
			TTLGranularity: time.Second,
			MinTTL:         time.Second,
			ExpirySlack:    time.Second,
		})
	})
	if unused := tp.Unused(tp.Addrs()); len(unused) > 0 {
		t.Errorf("no connection went to the agent %v through its proxy", unused)
	}
}
