package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock/internal/testenv"
)

// runID keeps this process's keys apart from every other run's on the
// shared servers.
var runID = func() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		printConfig()
	}
	os.Exit(m.Run())
}

// printConfig prints benchfmt configuration lines (key: value) describing
// the machine and the servers, which cmd/report puts in BENCHMARKS.md.
func printConfig() {
	if r := os.Getenv(EnvRound); r != "" {
		fmt.Printf("round: %s\n", r)
	}
	fmt.Printf("go-version: %s\n", runtime.Version())
	fmt.Printf("cores: %d\n", runtime.NumCPU())
	if a := os.Getenv("IDEMLOCK_REDIS_ADDR"); a != "" {
		fmt.Printf("redis-version: %s\n", redisVersion(a))
	}
	if a := os.Getenv("IDEMLOCK_ETCD_ENDPOINTS"); a != "" {
		fmt.Printf("etcd-version: %s\n", etcdVersion(strings.Split(a, ",")[0]))
	}
	if a := os.Getenv("IDEMLOCK_CONSUL_ADDR"); a != "" {
		fmt.Printf("consul-version: %s\n", consulVersion(a))
	}
	if a := os.Getenv("IDEMLOCK_MEMCACHED_ADDR"); a != "" {
		fmt.Printf("memcached-version: %s\n", memcachedVersion(a))
	}
	if u := os.Getenv(testenv.EnvPostgresURL); u != "" {
		fmt.Printf("postgres-version: %s\n", postgresVersion(u))
	}
}

// round returns the round number from EnvRound, or 0.
func round() int {
	n, _ := strconv.Atoi(os.Getenv(EnvRound))
	return max(n, 0)
}

// rotate returns libs starting at index r (mod len).
func rotate(libs []Lib, r int) []Lib {
	if len(libs) == 0 {
		return libs
	}
	r %= len(libs)
	return append(append([]Lib(nil), libs[r:]...), libs[:r]...)
}

// forEach runs fn as BenchmarkX/backend=<name>/lib=<name> for every backend
// (that has a server, or skipping it) and every library that takes part.
func forEach(b *testing.B, workload string, include func(Backend, Lib) bool, fn func(b *testing.B, be Backend, lib Lib, env Env, prefix string)) {
	for _, be := range Backends() {
		var libs []Lib
		for _, lib := range be.Libs {
			if include(be, lib) {
				libs = append(libs, lib)
			}
		}
		if len(libs) == 0 {
			continue
		}
		b.Run("backend="+be.Name, func(b *testing.B) {
			env := be.Env(b)
			for _, lib := range rotate(libs, round()) {
				b.Run("lib="+lib.Name, func(b *testing.B) {
					prefix := fmt.Sprintf("idemlock-bench/%s/%s/%s/%s/", runID, workload, lib.Name, strconv.Itoa(b.N))
					fn(b, be, lib, env, prefix)
				})
			}
		})
	}
}

func notVariant(_ Backend, lib Lib) bool { return !lib.HandoffOnly }

// BenchmarkTakeRelease: uncontended take + release (ns/op, ops/s).
func BenchmarkTakeRelease(b *testing.B) {
	forEach(b, "take", notVariant, func(b *testing.B, be Backend, lib Lib, env Env, prefix string) {
		TakeRelease(b, be, lib, env, prefix)
	})
}

// BenchmarkHandoff: 8 contenders on one key (ns/handoff-p50, -p99, acq-cv,
// acq-min/max); ns/op is one hold plus one hand-off.
func BenchmarkHandoff(b *testing.B) {
	forEach(b, "handoff", func(Backend, Lib) bool { return true }, func(b *testing.B, be Backend, lib Lib, env Env, prefix string) {
		Handoff(b, be, lib, env, prefix)
	})
}

// BenchmarkThroughput: 32 goroutines, one client, 1,000 keys (ops/s).
func BenchmarkThroughput(b *testing.B) {
	forEach(b, "throughput", notVariant, func(b *testing.B, be Backend, lib Lib, env Env, prefix string) {
		Throughput(b, be, lib, env, prefix)
	})
}

// BenchmarkRoundTrips: requests per take + release counted at the server
// (req/op; for Redis also cmds/op, which counts the commands scripts ran,
// and hook-req/op, counted by a go-redis hook in the clients).
func BenchmarkRoundTrips(b *testing.B) {
	forEach(b, "rt", func(be Backend, lib Lib) bool { return be.Meter != nil && !lib.HandoffOnly },
		func(b *testing.B, be Backend, lib Lib, env Env, prefix string) {
			RoundTrips(b, be, lib, env, prefix)
		})
}

// TestLibs checks every adapter against its server: a take excludes other
// clients, a release lets them in, and a waiting Lock wakes after a
// release. Without servers the networked backends are skipped.
func TestLibs(t *testing.T) {
	for _, be := range Backends() {
		t.Run(be.Name, func(t *testing.T) {
			env := be.Env(t)
			for _, lib := range be.Libs {
				t.Run(lib.Name, func(t *testing.T) {
					newClient := lib.Setup(t, env)
					a, c := newClient(), newClient()
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					key := fmt.Sprintf("idemlock-bench/%s/test/%s/k", runID, lib.Name)
					h, ok, err := a.Try(ctx, key)
					if err != nil || !ok {
						t.Fatalf("take of a free key: ok=%v err=%v", ok, err)
					}
					if _, ok, err := c.Try(ctx, key); err != nil || ok {
						t.Fatalf("another client took a held key: ok=%v err=%v", ok, err)
					}
					got := make(chan error, 1)
					go func() {
						h2, err := c.Lock(ctx, key)
						if err == nil {
							err = h2.Release(ctx)
						}
						got <- err
					}()
					time.Sleep(50 * time.Millisecond)
					select {
					case err := <-got:
						t.Fatalf("Lock returned while the key was held: %v", err)
					default:
					}
					if err := h.Release(ctx); err != nil {
						t.Fatalf("release: %v", err)
					}
					if err := <-got; err != nil {
						t.Fatalf("waiting Lock after the release: %v", err)
					}
				})
			}
		})
	}
}
