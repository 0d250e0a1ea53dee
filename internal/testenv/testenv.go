// Package testenv connects idemlock's tests to the real servers that
// scripts/servers.sh runs on loopback: single nodes of Redis, etcd, Consul
// and memcached, a three-primary Redis Cluster, PostgreSQL, and the cluster
// topologies (a 3-member etcd cluster, 3 Consul servers with a client
// agent, a Redis primary with 2 replicas and 3 Sentinels, a Redis Cluster of
// 3 primaries with a replica each, 3 memcached nodes).
//
// A test asks for a server's address and gets it, or is skipped:
//
//	func TestRedis(t *testing.T) {
//		rdb := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
//		t.Cleanup(func() { rdb.Close() })
//		...
//	}
//
// Addresses come from environment variables (see the Env constants), which
// `scripts/servers.sh env` prints:
//
//	scripts/servers.sh start
//	eval "$(scripts/servers.sh env)"
//	go test ./...
//
// `make test` does all of that and also sets IDEMLOCK_REQUIRE_SERVERS=1:
// then a missing variable or a server that does not accept a TCP connection
// fails the test instead of skipping it, so a test run that claims to cover a
// backend really did.
//
// Fault tests start a server or topology of their own with Private and
// pause, kill, restart or fail over that one (internal/faults wraps it), so
// tests sharing the common servers are never disturbed.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Environment variables read by this package.
const (
	// EnvRequire, set to 1, turns every skip for a missing or unreachable
	// server into a test failure.
	EnvRequire = "IDEMLOCK_REQUIRE_SERVERS"
	// EnvRedisAddr holds the host:port of a single Redis node.
	EnvRedisAddr = "IDEMLOCK_REDIS_ADDR"
	// EnvRedisClusterAddrs holds comma-separated host:port seeds of a Redis Cluster.
	EnvRedisClusterAddrs = "IDEMLOCK_REDIS_CLUSTER_ADDRS"
	// EnvEtcdEndpoints holds comma-separated etcd client endpoints.
	EnvEtcdEndpoints = "IDEMLOCK_ETCD_ENDPOINTS"
	// EnvConsulAddr holds the host:port of a Consul agent's HTTP API.
	EnvConsulAddr = "IDEMLOCK_CONSUL_ADDR"
	// EnvMemcachedAddr holds the host:port of a memcached server.
	EnvMemcachedAddr = "IDEMLOCK_MEMCACHED_ADDR"
	// EnvEtcdClusterEndpoints holds the client endpoints of the 3-member etcd cluster.
	EnvEtcdClusterEndpoints = "IDEMLOCK_ETCD_CLUSTER_ENDPOINTS"
	// EnvConsulClusterAddr holds the host:port of the HTTP API of the
	// client agent joined to the 3 Consul servers.
	EnvConsulClusterAddr = "IDEMLOCK_CONSUL_CLUSTER_ADDR"
	// EnvRedisSentinelAddrs holds the host:port of each of the 3 Sentinels
	// that watch a Redis primary and its 2 replicas.
	EnvRedisSentinelAddrs = "IDEMLOCK_REDIS_SENTINEL_ADDRS"
	// EnvRedisSentinelMaster holds the name the Sentinels know the primary
	// by (default [RedisSentinelMaster]).
	EnvRedisSentinelMaster = "IDEMLOCK_REDIS_SENTINEL_MASTER"
	// EnvRedisClusterHAAddrs holds the host:port of each node of the Redis
	// Cluster of 3 primaries with 1 replica each.
	EnvRedisClusterHAAddrs = "IDEMLOCK_REDIS_CLUSTER_HA_ADDRS"
	// EnvMemcachedClusterAddrs holds the host:port of each of 3 memcached nodes.
	EnvMemcachedClusterAddrs = "IDEMLOCK_MEMCACHED_CLUSTER_ADDRS"
	// EnvPostgresURL holds a postgres:// URL of the PostgreSQL server.
	EnvPostgresURL = "IDEMLOCK_POSTGRES_URL"
	// EnvServersDir, if set, is the scratch folder scripts/servers.sh keeps
	// its pid files in; Pause, Resume and Restart pass it on unchanged.
	EnvServersDir = "IDEMLOCK_SERVERS_DIR"
	// EnvPortOffset is added by scripts/servers.sh to every port; [Private]
	// sets it to run a server beside the shared ones.
	EnvPortOffset = "IDEMLOCK_PORT_OFFSET"
)

// Server names one of the test servers, spelled as scripts/servers.sh
// spells it.
type Server string

// The servers and topologies scripts/servers.sh runs.
const (
	Redis        Server = "redis"
	RedisCluster Server = "redis-cluster"
	Etcd         Server = "etcd"
	Consul       Server = "consul"
	Memcached    Server = "memcached"
	// EtcdCluster is 3 etcd members (units etcd-cluster-1..3).
	EtcdCluster Server = "etcd-cluster"
	// ConsulCluster is 3 Consul servers (consul-cluster-1..3) and the client
	// agent the library talks to (consul-cluster-client).
	ConsulCluster Server = "consul-cluster"
	// RedisSentinel is a Redis primary with 2 replicas (redis-ha-1..3,
	// redis-ha-1 the first primary) and 3 Sentinels (sentinel-1..3).
	RedisSentinel Server = "redis-sentinel"
	// RedisClusterHA is a Redis Cluster of 3 primaries with 1 replica each
	// (redis-cluster-ha-1..6).
	RedisClusterHA Server = "redis-cluster-ha"
	// MemcachedCluster is 3 memcached nodes (memcached-cluster-1..3).
	MemcachedCluster Server = "memcached-cluster"
	// Postgres is a PostgreSQL server (unit postgres).
	Postgres Server = "postgres"
)

// RedisSentinelMaster is the name the Sentinels of [RedisSentinel] know
// their primary by.
const RedisSentinelMaster = "idemlock"

// All returns every server, in the order scripts/servers.sh starts them.
func All() []Server {
	return []Server{Redis, RedisCluster, Etcd, Consul, Memcached,
		EtcdCluster, ConsulCluster, RedisSentinel, RedisClusterHA, MemcachedCluster, Postgres}
}

// Env returns the environment variable that holds s's address(es), or ""
// for an unknown server.
func (s Server) Env() string {
	switch s {
	case Redis:
		return EnvRedisAddr
	case RedisCluster:
		return EnvRedisClusterAddrs
	case Etcd:
		return EnvEtcdEndpoints
	case Consul:
		return EnvConsulAddr
	case Memcached:
		return EnvMemcachedAddr
	case EtcdCluster:
		return EnvEtcdClusterEndpoints
	case ConsulCluster:
		return EnvConsulClusterAddr
	case RedisSentinel:
		return EnvRedisSentinelAddrs
	case RedisClusterHA:
		return EnvRedisClusterHAAddrs
	case MemcachedCluster:
		return EnvMemcachedClusterAddrs
	case Postgres:
		return EnvPostgresURL
	}
	return ""
}

// dialTimeout bounds the reachability check of one address.
const dialTimeout = 2 * time.Second

// Required reports whether IDEMLOCK_REQUIRE_SERVERS asks for servers to be
// present, making a missing server a failure rather than a skip.
func Required() bool {
	v := strings.TrimSpace(os.Getenv(EnvRequire))
	return v != "" && v != "0" && !strings.EqualFold(v, "false")
}

const howTo = "run `make test`, or `scripts/servers.sh start` and then " +
	"`eval \"$(scripts/servers.sh env)\"` before go test"

// Addrs returns the addresses of server s from its environment variable,
// after checking that each accepts a TCP connection. When the variable is
// unset or a server is unreachable, the test is skipped, or fails if
// Required reports true. Entries may carry a scheme (http://host:port, as
// etcd endpoints sometimes do); they are returned as written.
func Addrs(t testing.TB, s Server) []string {
	t.Helper()
	addrs, err := lookup(s)
	if err == nil {
		err = reachable(addrs)
	}
	if err != nil {
		if Required() {
			t.Fatalf("testenv: %v (%s=1 makes this a failure; %s)", err, EnvRequire, howTo)
		} else {
			t.Skipf("testenv: %v; skipping test that needs a real %s server: %s", err, s, howTo)
		}
		return nil
	}
	return addrs
}

// lookup reads and splits the variable of server s.
func lookup(s Server) ([]string, error) {
	name := s.Env()
	if name == "" {
		return nil, fmt.Errorf("unknown server %q", s)
	}
	raw := strings.TrimSpace(os.Getenv(name))
	if raw == "" {
		return nil, fmt.Errorf("%s is not set", name)
	}
	var addrs []string
	for _, a := range strings.Split(raw, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%s=%q holds no address", name, raw)
	}
	return addrs, nil
}

// reachable dials every address once with a short timeout.
func reachable(addrs []string) error {
	for _, a := range addrs {
		hostport := a
		if strings.Contains(a, "://") {
			u, err := url.Parse(a)
			if err != nil {
				return fmt.Errorf("bad address %q: %v", a, err)
			}
			hostport = u.Host
		}
		conn, err := net.DialTimeout("tcp", hostport, dialTimeout)
		if err != nil {
			return fmt.Errorf("server at %s is unreachable: %v", a, err)
		}
		_ = conn.Close()
	}
	return nil
}

// RedisAddr returns the host:port of the single-node Redis server.
func RedisAddr(t testing.TB) string {
	t.Helper()
	return Addrs(t, Redis)[0]
}

// RedisClusterAddrs returns the seed addresses of the Redis Cluster.
func RedisClusterAddrs(t testing.TB) []string {
	t.Helper()
	return Addrs(t, RedisCluster)
}

// EtcdEndpoints returns the etcd client endpoints.
func EtcdEndpoints(t testing.TB) []string {
	t.Helper()
	return Addrs(t, Etcd)
}

// ConsulAddr returns the host:port of the Consul agent's HTTP API.
func ConsulAddr(t testing.TB) string {
	t.Helper()
	return Addrs(t, Consul)[0]
}

// MemcachedAddr returns the host:port of the memcached server.
func MemcachedAddr(t testing.TB) string {
	t.Helper()
	return Addrs(t, Memcached)[0]
}

// EtcdClusterEndpoints returns the client endpoints of the etcd cluster.
func EtcdClusterEndpoints(t testing.TB) []string {
	t.Helper()
	return Addrs(t, EtcdCluster)
}

// ConsulClusterAddr returns the host:port of the HTTP API of the Consul
// cluster's client agent.
func ConsulClusterAddr(t testing.TB) string {
	t.Helper()
	return Addrs(t, ConsulCluster)[0]
}

// RedisSentinelAddrs returns the Sentinels' addresses and the name they
// know the primary by.
func RedisSentinelAddrs(t testing.TB) (sentinels []string, master string) {
	t.Helper()
	return Addrs(t, RedisSentinel), sentinelMaster()
}

func sentinelMaster() string {
	if m := strings.TrimSpace(os.Getenv(EnvRedisSentinelMaster)); m != "" {
		return m
	}
	return RedisSentinelMaster
}

// RedisClusterHAAddrs returns the addresses of every node of the Redis
// Cluster with replicas.
func RedisClusterHAAddrs(t testing.TB) []string {
	t.Helper()
	return Addrs(t, RedisClusterHA)
}

// MemcachedClusterAddrs returns the addresses of the 3 memcached nodes.
func MemcachedClusterAddrs(t testing.TB) []string {
	t.Helper()
	return Addrs(t, MemcachedCluster)
}

// PostgresURL returns a postgres:// URL of the PostgreSQL server (user
// postgres, trust authentication, database postgres).
func PostgresURL(t testing.TB) string {
	t.Helper()
	return Addrs(t, Postgres)[0]
}

// scriptTimeout bounds one run of scripts/servers.sh from a test; a restart
// of the Redis Cluster takes a few seconds, Consul's a few more.
const scriptTimeout = 3 * time.Minute

// Instance is a server or topology started by [Private] for one test alone.
type Instance struct {
	server Server
	dir    string // its scratch folder (pid files, data, logs)
	offset int    // added to every port of the shared servers
	addrs  []string
}

// Private starts a server or topology of kind s for the calling test
// alone, in a scratch folder of its own and on ports moved away from the
// shared servers', and stops it when the test ends. Fault tests pause,
// kill, restart or fail over its processes without disturbing the tests
// that share the common servers.
//
// Like [Addrs] it skips the test when the shared servers are not set up
// (their variable is unset), or fails it under IDEMLOCK_REQUIRE_SERVERS=1.
func Private(t testing.TB, s Server) *Instance {
	t.Helper()
	if _, err := lookup(s); err != nil {
		if Required() {
			t.Fatalf("testenv: %v (%s=1 makes this a failure; %s)", err, EnvRequire, howTo)
		}
		t.Skipf("testenv: %v; skipping test that needs a real %s server: %s", err, s, howTo)
	}
	var lastErr error
	for range 8 {
		in := &Instance{server: s, dir: t.TempDir(), offset: 3000 + 10*rand.IntN(600)}
		if _, err := in.run("start"); err != nil {
			lastErr = err
			_, _ = in.run("stop")
			continue // most likely a port another private server took first
		}
		t.Cleanup(func() {
			if out, err := in.run("stop"); err != nil {
				t.Errorf("testenv: stopping private %s: %v\n%s", s, err, out)
			}
		})
		out, err := in.run("env")
		if err == nil {
			in.addrs, err = parseEnv(out, s.Env())
		}
		if err != nil {
			t.Fatalf("testenv: private %s: %v", s, err)
		}
		if err := reachable(in.addrs); err != nil {
			t.Fatalf("testenv: private %s: %v", s, err)
		}
		return in
	}
	t.Fatalf("testenv: could not start a private %s: %v", s, lastErr)
	return nil
}

// Server returns what the instance runs.
func (in *Instance) Server() Server { return in.server }

// Addrs returns the private server's addresses, as [Addrs] does for the
// shared one.
func (in *Instance) Addrs() []string { return in.addrs }

// Addr returns the private server's first address.
func (in *Instance) Addr() string { return in.addrs[0] }

// Pause stops the private server with SIGSTOP, so that it keeps its
// connections but answers nothing, as a hung server would. The test's
// cleanup stops it anyway, paused or not.
func (in *Instance) Pause(t testing.TB) { in.must(t, "pause") }

// Resume continues the private server after Pause (SIGCONT).
func (in *Instance) Resume(t testing.TB) { in.must(t, "resume") }

// Restart stops the private server and starts it again, returning once it
// answers. Redis, memcached and Consul (dev mode) come back empty; etcd,
// the Consul cluster and PostgreSQL keep their data; a Redis Cluster keeps
// its topology but not its keys.
func (in *Instance) Restart(t testing.TB) { in.must(t, "restart") }

// Node is one process (a unit) of a server or topology, as
// `scripts/servers.sh nodes` lists it.
type Node struct {
	// Unit names the process, as the script does: "etcd-cluster-2",
	// "sentinel-1", "redis-cluster-ha-4", "postgres".
	Unit string
	// Addr is its client host:port.
	Addr string
	// Role is what it is now: "leader" or "follower" (etcd members, Consul
	// servers), "client" (the Consul client agent), "primary" or "replica"
	// (Redis), "sentinel", "node" (anything else), or "down", "paused" or
	// "unknown" when it does not answer.
	Role string
	// Peer is the unit a replica replicates from, or the one a Sentinel
	// names as primary; empty otherwise.
	Peer string
}

// Nodes lists the instance's processes with their roles now.
func (in *Instance) Nodes(t testing.TB) []Node {
	t.Helper()
	out, err := in.Run("nodes", string(in.server))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	nodes, err := ParseNodes(out)
	if err != nil {
		t.Fatalf("testenv: private %s: %v", in.server, err)
	}
	return nodes
}

// ParseNodes reads the output of `scripts/servers.sh nodes NAME`.
func ParseNodes(out []byte) ([]Node, error) {
	var nodes []Node
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			return nil, fmt.Errorf("servers.sh nodes printed %q, want UNIT ADDR ROLE PEER", line)
		}
		n := Node{Unit: f[0], Addr: f[1], Role: f[2], Peer: f[3]}
		if n.Peer == "-" {
			n.Peer = ""
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// Run runs `scripts/servers.sh ARGS...` on the instance's set of servers
// (its scratch folder and ports) and returns the combined output: for
// example Run("kill", "etcd-cluster-2") or Run("failover", "redis-sentinel").
// Package internal/faults builds its process and topology faults on it.
func (in *Instance) Run(args ...string) ([]byte, error) {
	script, err := Script()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), EnvServersDir+"="+in.dir, EnvPortOffset+"="+strconv.Itoa(in.offset))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("scripts/servers.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

func (in *Instance) must(t testing.TB, verb string) {
	t.Helper()
	if out, err := in.run(verb); err != nil {
		t.Fatalf("testenv: %s private %s: %v\n%s", verb, in.server, err, out)
	}
}

// run executes scripts/servers.sh VERB [NAME] for this instance.
func (in *Instance) run(verb string) ([]byte, error) {
	if verb == "env" {
		return in.Run(verb)
	}
	return in.Run(verb, string(in.server))
}

// parseEnv picks the value of variable name out of `servers.sh env` output.
func parseEnv(out []byte, name string) ([]string, error) {
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "export "+name+"="); ok {
			if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
				v = v[1 : len(v)-1] // quoted: a URL with a '?'
			}
			return strings.Split(v, ","), nil
		}
	}
	return nil, fmt.Errorf("scripts/servers.sh env printed no %s", name)
}

// Script returns the path of scripts/servers.sh, found by walking up from
// the working directory (a test's package folder) to the folder that holds
// go.mod and scripts/servers.sh.
func Script() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		script := filepath.Join(dir, "scripts", "servers.sh")
		if fileExists(filepath.Join(dir, "go.mod")) && fileExists(script) {
			return script, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("scripts/servers.sh not found in any parent folder holding go.mod")
		}
		dir = parent
	}
}

func fileExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir()
}
