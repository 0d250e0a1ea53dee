package redislock_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// sentinel runs a Redis Sentinel (redis-server --sentinel, from the same
// package as the test server) for the duration of a test, monitoring the
// test Redis server as its master. scripts/servers.sh runs no Sentinel, and
// a failover client cannot connect without one. The Sentinel never fails
// over: its master has no replicas and it waits a minute before it would
// even consider the master down.
type sentinel struct {
	addr   string
	master string
}

func startSentinel(t *testing.T) sentinel {
	t.Helper()
	master := testenv.RedisAddr(t)
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if testenv.Required() {
			t.Fatalf("redis-server (which runs the Sentinel) is not on PATH: %v", err)
		}
		t.Skipf("redis-server (which runs the Sentinel) is not on PATH: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	host, mport, _ := net.SplitHostPort(master)
	name := uniqueName(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `port %d
bind 127.0.0.1
dir %s
sentinel monitor %s %s %s 1
sentinel down-after-milliseconds %s 60000
sentinel failover-timeout %s 600000
`, port, dir, name, host, mport, name, name), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, conf, "--sentinel")
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the Sentinel: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	s := sentinel{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), master: name}
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.addr})
	defer sc.Close()
	waitFor(t, "the Sentinel knows its master", 10*time.Second, func() bool {
		addr, err := sc.GetMasterAddrByName(context.Background(), name).Result()
		return err == nil && len(addr) == 2 && net.JoinHostPort(addr[0], addr[1]) == master
	})
	return s
}

func (s sentinel) client() *redis.Client {
	return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.master, SentinelAddrs: []string{s.addr}})
}

// TestSentinel runs the conformance suite through failover clients (the
// Sentinel client go-redis offers), then checks the UniversalClient and URL
// ways to make one.
func TestSentinel(t *testing.T) {
	s := startSentinel(t)
	newLocker := func(tb testing.TB) lock.Locker {
		c := s.client()
		tb.Cleanup(func() { _ = c.Close() })
		return locker(tb, c)
	}
	t.Run("Conformance", func(t *testing.T) {
		conformance.Run(t, conformance.Config{
			NewLocker:      func(t *testing.T) lock.Locker { return newLocker(t) },
			TTLGranularity: time.Millisecond,
		})
	})
	t.Run("UniversalClient", func(t *testing.T) {
		c := redis.NewUniversalClient(&redis.UniversalOptions{MasterName: s.master, Addrs: []string{s.addr}})
		defer c.Close()
		if _, ok := c.(*redis.Client); !ok {
			t.Fatalf("NewUniversalClient with a MasterName made a %T, want the failover *redis.Client", c)
		}
		prefix := single.testPrefix(t)
		other := s.client()
		defer other.Close()
		holdAndWake(t, locker(t, c, redislock.WithPrefix(prefix)), locker(t, other, redislock.WithPrefix(prefix)))
	})
	t.Run("URL", func(t *testing.T) {
		ctx := t.Context()
		b, err := lock.Open(ctx, "redis+sentinel://"+s.addr+"/0?master_name="+s.master)
		if err != nil {
			t.Fatal(err)
		}
		le, err := b.TryAcquire(ctx, t.Name(), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := b.TryAcquire(ctx, t.Name(), time.Minute); !errors.Is(err, redis.ErrClosed) {
			t.Errorf("TryAcquire after Close: %v, want the owned client closed", err)
		}
	})
}

// holdAndWake has holder take a key and waiter wait for it with
// lock.Acquire: the release must wake the waiter promptly.
func holdAndWake(t *testing.T, holder, waiter *redislock.Locker) {
	t.Helper()
	ctx := t.Context()
	le, err := holder.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		w, err := lock.Acquire(ctx, waiter, "k", time.Minute)
		if err == nil {
			err = w.Release(ctx)
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the waiter block; there is no event for that
	released := time.Now()
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(released); d > 100*time.Millisecond+conformance.SchedulingSlack {
		t.Errorf("the waiter took the key %v after the release", d)
	}
}

// TestRESP2 runs a notified hand-off over RESP2 connections, whose pub/sub
// replies (PING's "pong" array among them) differ from RESP3's.
func TestRESP2(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			noLeak(t)
			prefix := tp.testPrefix(t)
			newClient := func() redis.UniversalClient {
				var c redis.UniversalClient
				if tp.cluster {
					c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: tp.addrs(t), Protocol: 2})
				} else {
					c = redis.NewClient(&redis.Options{Addr: tp.addrs(t)[0], Protocol: 2})
				}
				t.Cleanup(func() { _ = c.Close() })
				return c
			}
			holdAndWake(t, locker(t, newClient(), redislock.WithPrefix(prefix)), locker(t, newClient(), redislock.WithPrefix(prefix)))
		})
	}
}
