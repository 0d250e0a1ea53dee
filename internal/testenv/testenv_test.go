package testenv

import (
	"fmt"
	"net"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

// recorder stands in for a *testing.T so the skip and fail paths of Addrs can
// be observed without skipping or failing the real test.
type recorder struct {
	testing.TB
	skipped, fatal string
}

func (r *recorder) Helper() {}

func (r *recorder) Skipf(format string, args ...any) { r.skipped = fmt.Sprintf(format, args...) }

func (r *recorder) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }

// listen returns the address of a loopback listener that lives until the
// test ends.
func listen(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln.Addr().String()
}

// closedAddr returns a loopback address nothing listens on any more.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestMissingVariableSkipsWithHowTo(t *testing.T) {
	t.Setenv(EnvRequire, "")
	t.Setenv(EnvRedisAddr, "")
	r := &recorder{}
	if got := Addrs(r, Redis); got != nil {
		t.Errorf("Addrs = %q, want nil", got)
	}
	if r.fatal != "" {
		t.Errorf("failed instead of skipping: %s", r.fatal)
	}
	for _, want := range []string{EnvRedisAddr + " is not set", "make test", "scripts/servers.sh start", "scripts/servers.sh env"} {
		if !strings.Contains(r.skipped, want) {
			t.Errorf("skip message %q lacks %q", r.skipped, want)
		}
	}
}

func TestMissingVariableFailsWhenRequired(t *testing.T) {
	t.Setenv(EnvRequire, "1")
	t.Setenv(EnvConsulAddr, "")
	r := &recorder{}
	Addrs(r, Consul)
	if r.skipped != "" {
		t.Errorf("skipped although required: %s", r.skipped)
	}
	if !strings.Contains(r.fatal, EnvConsulAddr+" is not set") || !strings.Contains(r.fatal, EnvRequire) {
		t.Errorf("fatal message = %q, want it to name %s and %s", r.fatal, EnvConsulAddr, EnvRequire)
	}
}

func TestUnreachableServer(t *testing.T) {
	addr := closedAddr(t)
	t.Setenv(EnvMemcachedAddr, addr)

	t.Setenv(EnvRequire, "1")
	r := &recorder{}
	Addrs(r, Memcached)
	if !strings.Contains(r.fatal, "unreachable") || !strings.Contains(r.fatal, addr) {
		t.Errorf("required: fatal message = %q, want it to say %s is unreachable", r.fatal, addr)
	}

	t.Setenv(EnvRequire, "0")
	r = &recorder{}
	Addrs(r, Memcached)
	if r.fatal != "" || !strings.Contains(r.skipped, "unreachable") {
		t.Errorf("not required: fatal %q, skip %q; want a skip saying unreachable", r.fatal, r.skipped)
	}
}

func TestOneOfSeveralUnreachable(t *testing.T) {
	t.Setenv(EnvRequire, "1")
	up, down := listen(t), closedAddr(t)
	t.Setenv(EnvRedisClusterAddrs, up+","+down)
	r := &recorder{}
	Addrs(r, RedisCluster)
	if !strings.Contains(r.fatal, down) {
		t.Errorf("fatal message = %q, want it to name %s", r.fatal, down)
	}
}

func TestReachableAddresses(t *testing.T) {
	t.Setenv(EnvRequire, "1")
	a, b := listen(t), listen(t)
	t.Setenv(EnvEtcdEndpoints, " http://"+a+" , "+b+",")
	r := &recorder{}
	got := Addrs(r, Etcd)
	if r.fatal != "" || r.skipped != "" {
		t.Fatalf("fatal %q, skip %q; want neither", r.fatal, r.skipped)
	}
	if want := []string{"http://" + a, b}; !reflect.DeepEqual(got, want) {
		t.Errorf("Addrs = %q, want %q", got, want)
	}
}

func TestOnlyCommasIsMissing(t *testing.T) {
	t.Setenv(EnvRequire, "1")
	t.Setenv(EnvRedisAddr, " , ")
	r := &recorder{}
	Addrs(r, Redis)
	if !strings.Contains(r.fatal, "holds no address") {
		t.Errorf("fatal message = %q, want it to say the variable holds no address", r.fatal)
	}
}

func TestUnknownServer(t *testing.T) {
	t.Setenv(EnvRequire, "")
	r := &recorder{}
	Addrs(r, Server("mongodb"))
	if !strings.Contains(r.skipped, `unknown server "mongodb"`) {
		t.Errorf("skip message = %q, want it to name the unknown server", r.skipped)
	}
}

func TestRequired(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "false": false, "FALSE": false, "1": true, "true": true, "yes": true} {
		t.Setenv(EnvRequire, v)
		if got := Required(); got != want {
			t.Errorf("Required() with %s=%q = %v, want %v", EnvRequire, v, got, want)
		}
	}
}

func TestEveryServerHasAVariable(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range All() {
		env := s.Env()
		if !strings.HasPrefix(env, "IDEMLOCK_") || seen[env] {
			t.Errorf("%s.Env() = %q, want a distinct IDEMLOCK_ variable", s, env)
		}
		seen[env] = true
	}
}

func TestScriptFound(t *testing.T) {
	script, err := Script()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(script, "/scripts/servers.sh") || !fileExists(script) {
		t.Errorf("Script() = %q, want an existing .../scripts/servers.sh", script)
	}
}

func TestParseNodes(t *testing.T) {
	out := []byte("redis-ha-1 127.0.0.1:16381 primary -\nredis-ha-2 127.0.0.1:16382 replica redis-ha-1\n")
	got, err := ParseNodes(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []Node{
		{Unit: "redis-ha-1", Addr: "127.0.0.1:16381", Role: "primary"},
		{Unit: "redis-ha-2", Addr: "127.0.0.1:16382", Role: "replica", Peer: "redis-ha-1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseNodes = %+v, want %+v", got, want)
	}
	if _, err := ParseNodes([]byte("redis-ha-1 127.0.0.1:16381\n")); err == nil {
		t.Error("ParseNodes accepted a line of two fields")
	}
}

// The script quotes the PostgreSQL URL (its '?' is a glob character).
func TestParseEnvQuoted(t *testing.T) {
	out := []byte("export IDEMLOCK_REDIS_ADDR=127.0.0.1:16379\n" +
		"export IDEMLOCK_POSTGRES_URL='postgres://postgres@127.0.0.1:15432/postgres?sslmode=disable'\n")
	got, err := parseEnv(out, EnvPostgresURL)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"postgres://postgres@127.0.0.1:15432/postgres?sslmode=disable"}; !reflect.DeepEqual(got, want) {
		t.Errorf("parseEnv = %q, want %q", got, want)
	}
	if _, err := parseEnv(out, EnvEtcdClusterEndpoints); err == nil {
		t.Error("parseEnv found a variable the output lacks")
	}
}

// Every server and topology the script knows has a variable in its env
// output, and each parses as a list of addresses.
func TestScriptEnvCoversEveryServer(t *testing.T) {
	script, err := Script()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", script, "env").CombinedOutput()
	if err != nil {
		t.Fatalf("servers.sh env: %v\n%s", err, out)
	}
	for _, s := range All() {
		addrs, err := parseEnv(out, s.Env())
		if err != nil || len(addrs) == 0 || addrs[0] == "" {
			t.Errorf("%s: %v, %q", s, err, addrs)
		}
	}
}

// TestChildProcess is the child process of TestChild.
func TestChildProcess(t *testing.T) {
	arg, ok := ChildArg()
	if !ok {
		return
	}
	ChildSignal(t, "ready-"+arg)
	ChildAwait("go")
	ChildSignal(t, "done")
	select {} // until killed
}

// TestChild runs TestChildProcess as a child: its argument arrives, the
// signals go both ways, and Kill ends a child that would never exit.
func TestChild(t *testing.T) {
	c := StartChild(t, "TestChildProcess", "x")
	c.Await(t, "was ready", c.Signalled("ready-x"))
	if c.Signalled("done")() {
		t.Fatal("the child was done before it was told to go")
	}
	c.Signal(t, "go")
	c.Await(t, "was done", c.Signalled("done"))
	c.Kill(t)
}
