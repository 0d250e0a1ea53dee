package faults_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock/internal/faults"
	"github.com/idemlock/lock/internal/leakcheck"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// noLeak checks, after every other clean-up of t, that no goroutine
// started during t is left: proxies wait for their goroutines on close.
func noLeak(t *testing.T) {
	leakcheck.Check(t)
}

// redisClient returns a client of addr that does not retry and gives up
// on a command after timeout, closed when t ends.
func redisClient(t *testing.T, addr string, timeout time.Duration) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ReadTimeout: timeout, WriteTimeout: timeout})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// get reads key straight from the server, past every proxy.
func get(t *testing.T, direct *redis.Client, key string) string {
	t.Helper()
	v, err := direct.Get(t.Context(), key).Result()
	if errors.Is(err, redis.Nil) {
		return ""
	}
	if err != nil {
		t.Fatalf("GET %s on the server: %v", key, err)
	}
	return v
}

// waitHit waits for f's first hit.
func waitHit(t *testing.T, f *faults.Fault) {
	t.Helper()
	select {
	case <-f.Hit():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s never acted", f)
	}
}

// redisNet starts a private Redis and returns a client through a proxy,
// a client straight to the server, and the proxies.
func redisNet(t *testing.T) (viaProxy, direct *redis.Client, n *faults.Net) {
	t.Helper()
	tp := faults.Start(t, testenv.Redis)
	direct = redisClient(t, tp.Addrs()[0], 5*time.Second)
	n = tp.Net(t)
	viaProxy = redisClient(t, n.Addr(tp.Addrs()[0]), 500*time.Millisecond)
	if err := viaProxy.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING through the proxy: %v", err)
	}
	return viaProxy, direct, n
}

func TestNetwork(t *testing.T) {
	noLeak(t)
	c, direct, n := redisNet(t)
	ctx := t.Context()

	// The unknown outcome: the server applied the SET, the client got an
	// error.
	t.Run("LoseNextReply", func(t *testing.T) {
		if err := c.Set(ctx, "lost", "before", 0).Err(); err != nil {
			t.Fatal(err)
		}
		f := n.LoseNextReply(t)
		err := c.Set(ctx, "lost", "after", 0).Err()
		if err == nil {
			t.Fatal("SET with its reply lost returned no error")
		}
		waitHit(t, f)
		if got := get(t, direct, "lost"); got != "after" {
			t.Errorf("the server holds %q, want the SET whose reply was lost applied (\"after\")", got)
		}
		// Once: the next request is answered.
		if err := c.Set(ctx, "lost", "again", 0).Err(); err != nil {
			t.Errorf("SET after the one lost reply: %v", err)
		}
		if f.Hits() != 1 {
			t.Errorf("LoseNextReply acted %d times, want 1", f.Hits())
		}
	})

	// Every reply, on every connection: raw connections here, as a client
	// that handshakes (HELLO) would lose the handshake's reply first.
	t.Run("LoseReplies", func(t *testing.T) {
		f := n.LoseReplies(t)
		for i := range 3 {
			conn, r := dial(t, n.Addr(direct.Options().Addr))
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintf(conn, "SET lost-all %d\r\n", i); err != nil {
				t.Fatal(err)
			}
			if line, err := r.ReadString('\n'); !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("SET %d: read %q, %v; want the connection reset", i, line, err)
			}
			if got := get(t, direct, "lost-all"); got != fmt.Sprint(i) {
				t.Fatalf("after SET %d the server holds %q: the request was not applied", i, got)
			}
		}
		f.Heal()
		if err := c.Set(ctx, "lost-all", "healed", 0).Err(); err != nil {
			t.Errorf("SET after Heal: %v", err)
		}
		if f.Hits() != 3 {
			t.Errorf("LoseReplies acted %d times, want 3", f.Hits())
		}
	})

	// A request into a black hole is held, not lost: with a reset before
	// the heal it never arrives.
	t.Run("BlackHoleToServerReset", func(t *testing.T) {
		f := n.BlackHole(t, faults.ToServer)
		if err := c.Set(ctx, "bh1", "held", 0).Err(); err == nil {
			t.Fatal("SET into a black hole returned no error")
		}
		waitHit(t, f)
		if got := get(t, direct, "bh1"); got != "" {
			t.Fatalf("the server holds %q while the request is held", got)
		}
		n.Reset()
		f.Heal()
		if err := c.Set(ctx, "bh1-after", "x", 0).Err(); err != nil {
			t.Fatalf("SET after the heal: %v", err)
		}
		if got := get(t, direct, "bh1"); got != "" {
			t.Errorf("the server holds %q: the held request arrived although its connection was reset", got)
		}
	})

	// ... and without a reset it arrives when the partition heals, as TCP
	// delivers it, although the client gave up long before.
	t.Run("BlackHoleToServerDelivered", func(t *testing.T) {
		f := n.BlackHole(t, faults.ToServer)
		if err := c.Set(ctx, "bh2", "late", 0).Err(); err == nil {
			t.Fatal("SET into a black hole returned no error")
		}
		waitHit(t, f)
		if got := get(t, direct, "bh2"); got != "" {
			t.Fatalf("the server holds %q while the request is held", got)
		}
		f.Heal()
		deadline := time.Now().Add(5 * time.Second)
		for get(t, direct, "bh2") != "late" {
			if time.Now().After(deadline) {
				t.Fatal("the held SET was not delivered after the heal")
			}
			time.Sleep(10 * time.Millisecond) // server state; no event to wait on
		}
	})

	// Replies into a black hole: the server applies, the client times out.
	t.Run("BlackHoleToClient", func(t *testing.T) {
		// The connection (and its handshake) first, so that the held
		// reply is the SET's.
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		f := n.BlackHole(t, faults.ToClient)
		if err := c.Set(ctx, "bh3", "applied", 0).Err(); err == nil {
			t.Fatal("SET whose reply is held returned no error")
		}
		waitHit(t, f)
		if got := get(t, direct, "bh3"); got != "applied" {
			t.Errorf("the server holds %q, want the request applied", got)
		}
		n.Reset()
		f.Heal()
	})

	t.Run("Latency", func(t *testing.T) {
		const latency, jitter = 150 * time.Millisecond, 50 * time.Millisecond
		slow := redisClient(t, n.Addr(direct.Options().Addr), 5*time.Second)
		f := n.Latency(t, faults.ToClient, latency, jitter)
		for range 3 {
			start := time.Now()
			if err := slow.Ping(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took < latency-jitter {
				t.Errorf("PING took %v with a latency of %v±%v", took, latency, jitter)
			}
		}
		if f.Hits() < 3 {
			t.Errorf("the latency fault delayed %d chunks, want at least 3", f.Hits())
		}
		f.Heal()
	})

	t.Run("Reset", func(t *testing.T) {
		conn, r := dial(t, n.Addr(direct.Options().Addr))
		ping(t, conn, r)
		if got := n.Reset(); got < 1 {
			t.Fatalf("Reset reset %d connections, want at least 1", got)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := r.ReadByte(); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("read after Reset: %v, want ECONNRESET", err)
		}
	})

	t.Run("Refuse", func(t *testing.T) {
		f := n.Refuse(t)
		// The reset comes as the connection opens: on loopback it may
		// reach the client before connect returns.
		conn, err := net.Dial("tcp", n.Addr(direct.Options().Addr))
		if err == nil {
			t.Cleanup(func() { _ = conn.Close() })
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("a refused connection: %v, want ECONNRESET", err)
		}
		waitHit(t, f)
		f.Heal()
		conn, r := dial(t, n.Addr(direct.Options().Addr))
		ping(t, conn, r)
	})

	// A fault on one proxy leaves the others alone: here two proxies in
	// front of the same server under two names.
	t.Run("OneProxy", func(t *testing.T) {
		addr := direct.Options().Addr
		_, port, _ := net.SplitHostPort(addr)
		other := redisClient(t, n.Addr("localhost:"+port), 500*time.Millisecond)
		f := n.Proxy(addr).BlackHole(t, faults.Both)
		if err := c.Ping(ctx).Err(); err == nil {
			t.Error("PING through the partitioned proxy answered")
		}
		if err := other.Ping(ctx).Err(); err != nil {
			t.Errorf("PING through the other proxy: %v", err)
		}
		n.Reset()
		f.Heal()
	})

	t.Run("NotLoopback", func(t *testing.T) {
		if _, err := n.DialContext(ctx, "tcp", "192.0.2.1:6379"); err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("dial of a non-loopback address: %v, want a refusal", err)
		}
	})
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn, bufio.NewReader(conn)
}

func ping(t *testing.T, conn net.Conn, r *bufio.Reader) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	line, err := r.ReadString('\n')
	if err != nil || line != "+PONG\r\n" {
		t.Fatalf("PING: %q, %v", line, err)
	}
}

// recorder stands in for a *testing.T to observe a refusal.
type recorder struct {
	testing.TB
	fatal string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }
func (r *recorder) Cleanup(func())                    {}

// The shared servers are reached through proxies but never faulted.
func TestSharedRefusesFaults(t *testing.T) {
	tp := faults.Shared(t, testenv.Redis)
	n := tp.Net(t)
	c := redisClient(t, n.Addr(tp.Addrs()[0]), 5*time.Second)
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING through a proxy to the shared server: %v", err)
	}
	for name, inject := range map[string]func(testing.TB){
		"BlackHole": func(tb testing.TB) { n.BlackHole(tb, faults.Both) },
		"LoseReply": func(tb testing.TB) { n.LoseNextReply(tb) },
		"Latency":   func(tb testing.TB) { n.Latency(tb, faults.Both, time.Second, 0) },
		"Pause":     func(tb testing.TB) { tp.Pause(tb, "redis") },
	} {
		r := &recorder{TB: t}
		func() {
			defer func() { _ = recover() }() // a refused process fault goes on with no instance
			inject(r)
		}()
		if !strings.Contains(r.fatal, "shared") {
			t.Errorf("%s on the shared servers: %q, want a refusal naming the shared servers", name, r.fatal)
		}
	}
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Errorf("PING after the refused faults: %v", err)
	}
}

// A lost reply on gRPC (etcd): many requests share one HTTP/2 connection
// and the server sends control frames of its own, yet the frame lost is
// the response, so the Put was applied every time the client got an error.
func TestLoseReplyGRPC(t *testing.T) {
	tp := faults.Start(t, testenv.Etcd)
	n := tp.Net(t)
	cli := etcdClient(t, n.Addrs(tp.Addrs()))
	direct := etcdClient(t, tp.Addrs())
	ctx := t.Context()
	for i := range 10 {
		if _, err := cli.Put(ctx, "k", "before"); err != nil {
			t.Fatal(err)
		}
		f := n.LoseNextReply(t)
		if _, err := cli.Put(ctx, "k", fmt.Sprint(i)); err == nil {
			t.Fatalf("Put %d with its reply lost returned no error", i)
		}
		waitHit(t, f)
		resp, err := direct.Get(ctx, "k")
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != fmt.Sprint(i) {
			t.Fatalf("Put %d with its reply lost: the server holds %v (%v), want it applied", i, resp, err)
		}
		f.Heal()
	}
}

// ... and on HTTP/1.1 (Consul), where net/http does not replay a PUT.
func TestLoseReplyHTTP(t *testing.T) {
	tp := faults.Start(t, testenv.Consul)
	n := tp.Net(t)
	c := consulClient(t, n.Addr(tp.Addrs()[0]))
	direct := consulClient(t, tp.Addrs()[0])
	for i := range 3 {
		f := n.LoseNextReply(t)
		if _, err := c.KV().Put(&api.KVPair{Key: "k", Value: []byte(fmt.Sprint(i))}, nil); err == nil {
			t.Fatalf("PUT %d with its reply lost returned no error", i)
		}
		waitHit(t, f)
		pair, _, err := direct.KV().Get("k", nil)
		if err != nil || pair == nil || string(pair.Value) != fmt.Sprint(i) {
			t.Fatalf("PUT %d with its reply lost: the agent holds %v (%v), want it applied", i, pair, err)
		}
		f.Heal()
	}
}

func etcdClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func consulClient(t *testing.T, addr string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = addr
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
