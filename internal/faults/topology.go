package faults

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock/internal/testenv"
)

// Node is one process of a topology and its role now (see
// [testenv.Node]).
type Node = testenv.Node

// changeTimeout bounds the wait for a new leader or primary after a kill:
// Sentinel needs its down-after (3 s) and an election, a Redis Cluster its
// node timeout (3 s) and an election, etcd and Consul about a second.
const changeTimeout = 60 * time.Second

// Topology is a server or topology of scripts/servers.sh under test: a
// private set started by [Start], on which every fault is allowed, or the
// shared one ([Shared]), which a test reaches through proxies but never
// faults.
type Topology struct {
	server testenv.Server
	in     *testenv.Instance // nil for the shared servers
	addrs  []string
	master string

	mu   sync.Mutex
	nets []*Net // every Net made, for Used
}

// Start starts a private set of server s (a single server such as
// testenv.Redis, or a topology such as testenv.EtcdCluster) for the
// calling test alone, and stops it when the test ends. It skips or fails
// the test as [testenv.Private] does when the servers are not set up.
func Start(tb testing.TB, s testenv.Server) *Topology {
	tb.Helper()
	in := testenv.Private(tb, s)
	return &Topology{server: s, in: in, addrs: in.Addrs(), master: testenv.RedisSentinelMaster}
}

// Shared returns the shared servers of s, which tests use through
// proxies ([Topology.Net]) with no faults: every fault method fails the
// test. It skips or fails the test as [testenv.Addrs] does when the
// servers are not set up.
func Shared(tb testing.TB, s testenv.Server) *Topology {
	tb.Helper()
	tp := &Topology{server: s, addrs: testenv.Addrs(tb, s), master: testenv.RedisSentinelMaster}
	if s == testenv.RedisSentinel {
		_, tp.master = testenv.RedisSentinelAddrs(tb)
	}
	return tp
}

// Server returns what the topology runs.
func (tp *Topology) Server() testenv.Server { return tp.server }

// Addrs returns the servers' own addresses, as the environment variable
// of the server holds them: etcd endpoints, the Consul client agent's HTTP
// address, the Sentinels, the Redis Cluster nodes, the memcached nodes, or
// the PostgreSQL URL. Give a client [Net.Addrs] of them (or Net.DialContext)
// to go through proxies.
func (tp *Topology) Addrs() []string { return slices.Clone(tp.addrs) }

// SentinelMaster returns the name the Sentinels know the primary by.
func (tp *Topology) SentinelMaster() string { return tp.master }

// Net returns a new set of proxies for the topology's clients (see [Net]),
// closed when tb ends. On the shared servers it makes proxies whose fault
// methods fail the test. A test that checks that no goroutine outlives a
// client gives each client a Net of its own, made with the client's tb.
func (tp *Topology) Net(tb testing.TB) *Net {
	tb.Helper()
	n := newNet(tb, tp.in == nil)
	tp.mu.Lock()
	tp.nets = append(tp.nets, n)
	tp.mu.Unlock()
	return n
}

// Used returns the server addresses that client connections went to
// through the proxies of the Nets made so far (also those closed since),
// sorted: a test that claims to run through proxies checks them.
func (tp *Topology) Used() []string {
	tp.mu.Lock()
	nets := slices.Clone(tp.nets)
	tp.mu.Unlock()
	set := map[string]bool{}
	for _, n := range nets {
		n.used(set)
	}
	out := make([]string, 0, len(set))
	for u := range set {
		out = append(out, u)
	}
	slices.Sort(out)
	return out
}

// Unused returns the addresses among upstreams that no client connection
// went to through the topology's Nets.
func (tp *Topology) Unused(upstreams []string) []string {
	used := tp.Used()
	var out []string
	for _, u := range upstreams {
		if !slices.Contains(used, u) {
			out = append(out, u)
		}
	}
	return out
}

// private returns the instance, or fails the test on the shared servers.
func (tp *Topology) private(tb testing.TB, what string) *testenv.Instance {
	tb.Helper()
	if tp.in == nil {
		tb.Fatalf("faults: %s refused on the shared %s: shared servers are never faulted; use faults.Start for a private set", what, tp.server)
	}
	return tp.in
}

// Nodes lists the topology's processes and their roles now.
func (tp *Topology) Nodes(tb testing.TB) []Node {
	tb.Helper()
	return tp.private(tb, "listing nodes").Nodes(tb)
}

// Node returns the process named unit, as [Topology.Nodes] lists it.
func (tp *Topology) Node(tb testing.TB, unit string) Node {
	tb.Helper()
	for _, n := range tp.Nodes(tb) {
		if n.Unit == unit {
			return n
		}
	}
	tb.Fatalf("faults: %s has no unit %q", tp.server, unit)
	return Node{}
}

// nodes lists the nodes, reporting a failure instead of failing the test
// (for polling).
func (tp *Topology) nodes() ([]Node, error) {
	out, err := tp.in.Run("nodes", string(tp.server))
	if err != nil {
		return nil, err
	}
	return testenv.ParseNodes(out)
}

// process runs servers.sh VERB UNIT and makes a fault healed by servers.sh
// start UNIT, which resumes or restarts the unit and waits until the whole
// topology is healthy again.
func (tp *Topology) process(tb testing.TB, verb, unit, desc string) *Fault {
	tb.Helper()
	in := tp.private(tb, desc)
	if _, err := in.Run(verb, unit); err != nil {
		tb.Fatalf("faults: %s: %v", desc, err)
	}
	f := newFault(tb, kindProcess, desc)
	f.healFn = func() error {
		_, err := in.Run("start", unit)
		return err
	}
	f.recordHit()
	return f.register()
}

// Pause stops the process unit with SIGSTOP (its whole process group): it
// keeps its connections and answers nothing, as a hung or starved server
// does. Heal resumes it and waits until the topology is healthy.
func (tp *Topology) Pause(tb testing.TB, unit string) *Fault {
	tb.Helper()
	return tp.process(tb, "pause", unit, "pause "+unit)
}

// Kill kills the process unit with SIGKILL (kill -9), keeping its data
// dir. Heal starts it again with its data and returns once the whole
// topology is healthy: it rejoins as a follower or replica.
func (tp *Topology) Kill(tb testing.TB, unit string) *Fault {
	tb.Helper()
	return tp.process(tb, "kill", unit, "kill -9 "+unit)
}

// Restart stops the process unit cleanly (SIGTERM; SIGINT for
// PostgreSQL) and starts it again with its data, returning once the
// topology is healthy.
func (tp *Topology) Restart(tb testing.TB, unit string) {
	tb.Helper()
	in := tp.private(tb, "restart "+unit)
	if _, err := in.Run("restart", unit); err != nil {
		tb.Fatalf("faults: restart %s: %v", unit, err)
	}
}

// Leader returns the etcd or Consul leader, or the primary the Sentinels
// name.
func (tp *Topology) Leader(tb testing.TB) Node {
	tb.Helper()
	tp.private(tb, "finding the leader")
	var n Node
	tp.waitFor(tb, "a leader", func(nodes []Node) bool {
		var ok bool
		n, ok = leader(tp.server, nodes)
		return ok
	})
	return n
}

// leader picks the leader out of nodes.
func leader(s testenv.Server, nodes []Node) (Node, bool) {
	switch s {
	case testenv.RedisSentinel:
		return sentinelPrimary(nodes)
	case testenv.EtcdCluster, testenv.ConsulCluster:
		for _, n := range nodes {
			if n.Role == "leader" {
				return n, true
			}
		}
	}
	return Node{}, false
}

// sentinelPrimary returns the primary every running Sentinel names, if it
// says it is a primary.
func sentinelPrimary(nodes []Node) (Node, bool) {
	name := ""
	for _, n := range nodes {
		if n.Role == "down" || !strings.HasPrefix(n.Unit, "sentinel-") {
			continue
		}
		if n.Role != "sentinel" || n.Peer == "" || (name != "" && n.Peer != name) {
			return Node{}, false
		}
		name = n.Peer
	}
	for _, n := range nodes {
		if n.Unit == name && n.Role == "primary" {
			return n, true
		}
	}
	return Node{}, false
}

// KillLeader kills (kill -9) the etcd leader, the Consul leader or the
// Redis primary the Sentinels name, and waits until another node has taken
// over (for Sentinel: every running Sentinel names it and it is a
// primary). It returns the old and the new leader; Heal restarts the old
// one, which rejoins as a follower or replica.
func (tp *Topology) KillLeader(tb testing.TB) (old, next Node, f *Fault) {
	tb.Helper()
	switch tp.server {
	case testenv.EtcdCluster, testenv.ConsulCluster, testenv.RedisSentinel:
	default:
		tb.Fatalf("faults: KillLeader works on %s, %s and %s, not %s (for %s use KillPrimary)",
			testenv.EtcdCluster, testenv.ConsulCluster, testenv.RedisSentinel, tp.server, testenv.RedisClusterHA)
	}
	old = tp.Leader(tb)
	f = tp.Kill(tb, old.Unit)
	tp.waitFor(tb, "a new leader after killing "+old.Unit, func(nodes []Node) bool {
		var ok bool
		next, ok = leader(tp.server, nodes)
		return ok && next.Unit != old.Unit
	})
	tb.Logf("faults: killed %s %s; %s took over", tp.server, old.Unit, next.Unit)
	return old, next, f
}

// KillPrimary kills (kill -9) the Redis Cluster primary unit (a unit of
// testenv.RedisClusterHA that is a primary now) and waits until its
// replica has been promoted. It returns the promoted node; Heal restarts
// the killed one, which rejoins as a replica.
func (tp *Topology) KillPrimary(tb testing.TB, unit string) (promoted Node, f *Fault) {
	tb.Helper()
	if tp.server != testenv.RedisClusterHA {
		tb.Fatalf("faults: KillPrimary works on %s, not %s", testenv.RedisClusterHA, tp.server)
	}
	var replicas []string
	for _, n := range tp.Nodes(tb) {
		if n.Unit == unit && n.Role != "primary" {
			tb.Fatalf("faults: KillPrimary %s: it is %s, not a primary", unit, n.Role)
		}
		if n.Peer == unit && n.Role == "replica" {
			replicas = append(replicas, n.Unit)
		}
	}
	if len(replicas) == 0 {
		tb.Fatalf("faults: KillPrimary %s: it has no replica to promote", unit)
	}
	f = tp.Kill(tb, unit)
	tp.waitFor(tb, "a replica of "+unit+" promoted", func(nodes []Node) bool {
		for _, n := range nodes {
			if slices.Contains(replicas, n.Unit) && n.Role == "primary" {
				promoted = n
				return true
			}
		}
		return false
	})
	tb.Logf("faults: killed primary %s; %s was promoted", unit, promoted.Unit)
	return promoted, f
}

// Failover makes the Sentinels fail the primary over (SENTINEL FAILOVER)
// and returns once the new primary is in place and the old one replicates
// from it. It returns the old and the new primary. The topology is healthy
// afterwards: there is nothing to heal.
func (tp *Topology) Failover(tb testing.TB) (old, next Node) {
	tb.Helper()
	if tp.server != testenv.RedisSentinel {
		tb.Fatalf("faults: Failover works on %s, not %s (for %s use PromoteReplica)", testenv.RedisSentinel, tp.server, testenv.RedisClusterHA)
	}
	old = tp.Leader(tb)
	if _, err := tp.in.Run("failover", string(tp.server)); err != nil {
		tb.Fatalf("faults: Sentinel failover: %v", err)
	}
	next = tp.Leader(tb)
	if next.Unit == old.Unit {
		tb.Fatalf("faults: Sentinel failover left %s primary", old.Unit)
	}
	tb.Logf("faults: Sentinel failover from %s to %s", old.Unit, next.Unit)
	return old, next
}

// PromoteReplica sends CLUSTER FAILOVER to unit, a replica of
// testenv.RedisClusterHA, and returns once it is a primary and its old
// primary replicates from it. It returns the old primary and the promoted
// node. The topology is healthy afterwards: there is nothing to heal.
func (tp *Topology) PromoteReplica(tb testing.TB, unit string) (old, promoted Node) {
	tb.Helper()
	if tp.server != testenv.RedisClusterHA {
		tb.Fatalf("faults: PromoteReplica works on %s, not %s", testenv.RedisClusterHA, tp.server)
	}
	n := tp.Node(tb, unit)
	if n.Role != "replica" {
		tb.Fatalf("faults: PromoteReplica %s: it is %s, not a replica", unit, n.Role)
	}
	old = tp.Node(tb, n.Peer)
	if _, err := tp.in.Run("failover", unit); err != nil {
		tb.Fatalf("faults: CLUSTER FAILOVER on %s: %v", unit, err)
	}
	promoted = tp.Node(tb, unit)
	tb.Logf("faults: %s promoted over %s", unit, old.Unit)
	return old, promoted
}

// waitFor polls the nodes (server state that sends no event) until cond
// holds, or fails the test after changeTimeout.
func (tp *Topology) waitFor(tb testing.TB, what string, cond func([]Node) bool) {
	tb.Helper()
	deadline := time.Now().Add(changeTimeout)
	var last []Node
	var lastErr error
	for {
		nodes, err := tp.nodes()
		if err == nil && cond(nodes) {
			return
		}
		if err == nil {
			last = nodes
		}
		lastErr = err
		if time.Now().After(deadline) {
			tb.Fatalf("faults: %s: not within %v; nodes: %v (last error: %v)", what, changeTimeout, describe(last), lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func describe(nodes []Node) string {
	parts := make([]string, len(nodes))
	for i, n := range nodes {
		parts[i] = fmt.Sprintf("%s=%s", n.Unit, n.Role)
		if n.Peer != "" {
			parts[i] += "(" + n.Peer + ")"
		}
	}
	return strings.Join(parts, " ")
}
