// Package modules checks what a user of idemlock pays for in modules: the
// root module needs no third-party module, and a program that imports only
// lock and one networked backend gets that backend's client and nothing
// of the other backends'.
package modules

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/idemlock/lock/internal/testenv"
)

// root returns the repository's root folder.
func root(t *testing.T) string {
	t.Helper()
	script, err := testenv.Script()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(filepath.Dir(script))
}

// goCmd runs the go command in dir, outside any workspace and allowed to
// update go.mod, and returns its output.
func goCmd(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s in %s: %v\n%s", strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// modules returns the module paths `go list -m all` prints in dir, the
// main module first.
func modules(t *testing.T, dir string) []string {
	t.Helper()
	var paths []string
	for _, line := range strings.Split(strings.TrimSpace(goCmd(t, dir, "list", "-m", "all")), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			paths = append(paths, f[0])
		}
	}
	return paths
}

func TestRootModuleHasNoDependency(t *testing.T) {
	got := modules(t, root(t))
	if len(got) != 1 || got[0] != "github.com/idemlock/lock" {
		t.Errorf("go list -m all in the root module lists %d modules, want only github.com/idemlock/lock itself:\n%s", len(got), strings.Join(got, "\n"))
	}
}

// forbidden are module path prefixes a program using only lock and
// backends/redislock must not list: the other backends' clients (and
// what they pull: grpc, zap), the OpenTelemetry observer's module and
// OTel itself, and the repository's test-only modules.
var forbidden = []string{
	"go.opentelemetry.io/",
	"github.com/prometheus/",
	"github.com/idemlock/lock/observers/",
	"go.etcd.io/",
	"google.golang.org/grpc",
	"go.uber.org/zap",
	"go.uber.org/goleak",
	"github.com/hashicorp/",
	"github.com/bradfitz/gomemcache",
	"github.com/jackc/",
	"github.com/anishathalye/porcupine",
	"github.com/idemlock/lock/backends/etcdlock",
	"github.com/idemlock/lock/backends/consullock",
	"github.com/idemlock/lock/backends/memcachedlock",
	"github.com/idemlock/lock/backends/pglock",
}

func TestRedisOnlyProgramModules(t *testing.T) {
	repo := root(t)
	dir := t.TempDir()
	// A user's module at an old go line: the go command raises it to what
	// the modules it requires need.
	gomod := `module example.com/app

go 1.21

require (
	github.com/idemlock/lock v0.0.0-00010101000000-000000000000
	github.com/idemlock/lock/backends/redislock v0.0.0-00010101000000-000000000000
)

replace (
	github.com/idemlock/lock => ` + repo + `
	github.com/idemlock/lock/backends/redislock => ` + filepath.Join(repo, "backends", "redislock") + `
)
`
	main := `package main

import (
	"context"
	"fmt"

	"github.com/idemlock/lock"
	_ "github.com/idemlock/lock/backends/redislock"
)

func main() {
	l, err := lock.Open(context.Background(), "redis://127.0.0.1:6379")
	fmt.Println(l, err)
}
`
	for name, text := range map[string]string{"go.mod": gomod, "main.go": main} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	goCmd(t, dir, "mod", "tidy")
	goCmd(t, dir, "build", "-o", os.DevNull, ".")
	got := modules(t, dir)
	t.Logf("go list -m all: %d modules:\n%s", len(got), strings.Join(got, "\n"))
	has := func(path string) bool {
		for _, m := range got {
			if m == path {
				return true
			}
		}
		return false
	}
	if !has("github.com/redis/go-redis/v9") || !has("github.com/idemlock/lock/backends/redislock") {
		t.Errorf("the program's modules lack redislock or go-redis: the check checks nothing")
	}
	for _, m := range got {
		for _, f := range forbidden {
			if strings.HasPrefix(m, f) {
				t.Errorf("a program importing only lock and backends/redislock lists %s in go list -m all", m)
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "go ") {
			t.Logf("the program's go.mod after go mod tidy: %s", line)
		}
	}
}
