// Package testenv connects idemlock's tests to the real servers that
// scripts/servers.sh runs on loopback: Redis (single node and a three-master
// Cluster), etcd, Consul and memcached.
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
// Fault tests drive the same script through Pause, Resume and Restart.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
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
	// EnvServersDir, if set, is the scratch folder scripts/servers.sh keeps
	// its pid files in; Pause, Resume and Restart pass it on unchanged.
	EnvServersDir = "IDEMLOCK_SERVERS_DIR"
)

// Server names one of the test servers, spelled as scripts/servers.sh
// spells it.
type Server string

// The servers scripts/servers.sh runs.
const (
	Redis        Server = "redis"
	RedisCluster Server = "redis-cluster"
	Etcd         Server = "etcd"
	Consul       Server = "consul"
	Memcached    Server = "memcached"
)

// All returns every server, in the order scripts/servers.sh starts them.
func All() []Server {
	return []Server{Redis, RedisCluster, Etcd, Consul, Memcached}
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

// scriptTimeout bounds one run of scripts/servers.sh from a test; a restart
// of the Redis Cluster takes a few seconds, Consul's a few more.
const scriptTimeout = 3 * time.Minute

// Pause stops server s with SIGSTOP through scripts/servers.sh, so that it
// holds its connections but answers nothing, as a hung server would. The
// test's cleanup resumes it, so a failing test cannot leave it paused.
func Pause(t testing.TB, s Server) {
	t.Helper()
	t.Cleanup(func() {
		if err := run("resume", s); err != nil {
			t.Errorf("testenv: resuming %s after the test: %v", s, err)
		}
	})
	if err := run("pause", s); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Resume continues server s after Pause (SIGCONT).
func Resume(t testing.TB, s Server) {
	t.Helper()
	if err := run("resume", s); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Restart stops server s and starts it again, returning once it answers.
// Redis, memcached and Consul (dev mode) come back empty; etcd keeps its
// data; the Redis Cluster keeps its topology but not its keys.
func Restart(t testing.TB, s Server) {
	t.Helper()
	if err := run("restart", s); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// run executes scripts/servers.sh VERB s. The servers must already be
// running, so the variables must be set, as for Addrs.
func run(verb string, s Server) error {
	if s.Env() == "" {
		return fmt.Errorf("unknown server %q", s)
	}
	script, err := Script()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script, verb, string(s))
	cmd.Env = os.Environ() // IDEMLOCK_SERVERS_DIR passes through
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("scripts/servers.sh %s %s: %v\n%s", verb, s, err, out)
	}
	return nil
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
