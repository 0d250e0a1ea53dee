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
// Fault tests start a server of their own with Private and pause, restart or
// flush that one, so tests sharing the common servers are never disturbed.
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

// Instance is a server started by [Private] for one test alone.
type Instance struct {
	server Server
	dir    string // its scratch folder (pid files, data, logs)
	offset int    // added to every port of the shared servers
	addrs  []string
}

// Private starts a server of kind s for the calling test alone, in a
// scratch folder of its own and on ports moved away from the shared
// servers', and stops it when the test ends. Fault tests pause, restart or
// flush it without disturbing the tests that share the common servers.
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
	for range 5 {
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
// answers. Redis, memcached and Consul (dev mode) come back empty; etcd
// keeps its data; a Redis Cluster keeps its topology but not its keys.
func (in *Instance) Restart(t testing.TB) { in.must(t, "restart") }

func (in *Instance) must(t testing.TB, verb string) {
	t.Helper()
	if out, err := in.run(verb); err != nil {
		t.Fatalf("testenv: %s private %s: %v\n%s", verb, in.server, err, out)
	}
}

// run executes scripts/servers.sh VERB [NAME] for this instance.
func (in *Instance) run(verb string) ([]byte, error) {
	script, err := Script()
	if err != nil {
		return nil, err
	}
	args := []string{script, verb}
	if verb != "env" {
		args = append(args, string(in.server))
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", args...)
	cmd.Env = append(os.Environ(), EnvServersDir+"="+in.dir, EnvPortOffset+"="+strconv.Itoa(in.offset))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("scripts/servers.sh %s %s: %v\n%s", verb, in.server, err, out)
	}
	return out, nil
}

// parseEnv picks the value of variable name out of `servers.sh env` output.
func parseEnv(out []byte, name string) ([]string, error) {
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "export "+name+"="); ok {
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
