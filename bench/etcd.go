package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

func etcdBackend() Backend {
	return Backend{
		Name: "etcd",
		Env:  func(tb testing.TB) Env { return Env{EtcdEndpoints: testenv.EtcdEndpoints(tb)} },
		Libs: []Lib{
			{
				Name: "idemlock",
				Desc: "idemlock etcdlock: a take is one Txn with a pooled lease, a release one Txn; waiters watch the key",
				Setup: etcdSetup(func(tb testing.TB, cli *clientv3.Client) (Client, func()) {
					l, err := etcdlock.New(cli)
					if err != nil {
						tb.Fatalf("etcdlock: %v", err)
					}
					return idemClient{l}, func() { _ = l.Close() }
				}),
			},
			{
				Name:        "idemlock-queued",
				Label:       "idemlock (WithQueue)",
				Desc:        "idemlock etcdlock with WithQueue: waiters queue as keys ordered by create revision; only the head takes on a release",
				HandoffOnly: true,
				Scaling:     true,
				Setup: etcdSetup(func(tb testing.TB, cli *clientv3.Client) (Client, func()) {
					l, err := etcdlock.New(cli, etcdlock.WithQueue())
					if err != nil {
						tb.Fatalf("etcdlock: %v", err)
					}
					return idemClient{l}, func() { _ = l.Close() }
				}),
			},
			{
				Name:    "etcd-mutex",
				Scaling: true,
				Label:   "concurrency.Mutex (session reused)",
				Desc: "etcd client v3.7.3 concurrency.Mutex, each session reused for lock after lock " +
					"(one session per concurrent holder, kept alive by the client)",
				Setup: etcdSetup(func(_ testing.TB, cli *clientv3.Client) (Client, func()) {
					c := &etcdMutexClient{cli: cli, reuse: true}
					return c, c.close
				}),
			},
			{
				Name:  "etcd-mutex-session-per-lock",
				Label: "concurrency.Mutex (session per lock)",
				Desc:  "concurrency.Mutex with a new session (lease grant + keep-alive) per lock, closed (revoked) after unlock",
				Setup: etcdSetup(func(_ testing.TB, cli *clientv3.Client) (Client, func()) {
					c := &etcdMutexClient{cli: cli}
					return c, c.close
				}),
			},
		},
		Meter:      newEtcdMeter,
		Load:       newEtcdMeter,
		Background: time.Second, // etcdlock's default TTL slack
	}
}

// etcdSetup returns a Setup whose clients each have an etcd client of
// their own.
func etcdSetup(wrap func(testing.TB, *clientv3.Client) (Client, func())) func(testing.TB, Env) func() Client {
	return func(tb testing.TB, env Env) func() Client {
		return func() Client {
			cli, err := clientv3.New(clientv3.Config{Endpoints: env.EtcdEndpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				tb.Fatalf("etcd client: %v", err)
			}
			c, closeFn := wrap(tb, cli)
			tb.Cleanup(func() {
				closeFn()
				_ = cli.Close()
			})
			return c
		}
	}
}

// etcdMutexClient drives concurrency.Mutex. With reuse, sessions are kept
// in a free list and each serves one lock at a time (a session must not
// hold the same mutex twice at once); without, every lock gets a session
// of its own, closed at unlock.
type etcdMutexClient struct {
	cli   *clientv3.Client
	reuse bool

	mu   sync.Mutex
	free []*concurrency.Session
	all  []*concurrency.Session
}

func (c *etcdMutexClient) session() (*concurrency.Session, error) {
	if c.reuse {
		c.mu.Lock()
		if n := len(c.free); n > 0 {
			s := c.free[n-1]
			c.free = c.free[:n-1]
			c.mu.Unlock()
			return s, nil
		}
		c.mu.Unlock()
	}
	s, err := concurrency.NewSession(c.cli, concurrency.WithTTL(int(TTL/time.Second)))
	if err != nil {
		return nil, err
	}
	if c.reuse {
		c.mu.Lock()
		c.all = append(c.all, s)
		c.mu.Unlock()
	}
	return s, nil
}

func (c *etcdMutexClient) done(s *concurrency.Session) error {
	if c.reuse {
		c.mu.Lock()
		c.free = append(c.free, s)
		c.mu.Unlock()
		return nil
	}
	return s.Close()
}

func (c *etcdMutexClient) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.all {
		_ = s.Close()
	}
	c.all, c.free = nil, nil
}

func (c *etcdMutexClient) Try(ctx context.Context, key string) (Held, bool, error) {
	s, err := c.session()
	if err != nil {
		return nil, false, err
	}
	m := concurrency.NewMutex(s, key)
	switch err := m.TryLock(ctx); {
	case err == nil:
		return etcdHeld{c, s, m}, true, nil
	case errors.Is(err, concurrency.ErrLocked):
		return nil, false, c.done(s)
	default:
		_ = c.done(s)
		return nil, false, err
	}
}

func (c *etcdMutexClient) Lock(ctx context.Context, key string) (Held, error) {
	s, err := c.session()
	if err != nil {
		return nil, err
	}
	m := concurrency.NewMutex(s, key)
	if err := m.Lock(ctx); err != nil {
		_ = c.done(s)
		return nil, err
	}
	return etcdHeld{c, s, m}, nil
}

type etcdHeld struct {
	c *etcdMutexClient
	s *concurrency.Session
	m *concurrency.Mutex
}

func (h etcdHeld) Release(ctx context.Context) error {
	return errors.Join(h.m.Unlock(ctx), h.c.done(h.s))
}

// etcdMeter counts the gRPC messages the etcd server received
// (grpc_server_msg_received_total from its /metrics): one per unary call
// (Txn, Range, LeaseGrant, ...) and one per message on a stream (each
// lease keep-alive, each watch request). Its Counts also hold "inflight":
// the unary calls received but not yet answered when Stop read them
// (grpc_server_started_total less grpc_server_handled_total), a backlog
// the received count alone does not show.
type etcdMeter struct {
	url    string
	before map[string]float64
}

func newEtcdMeter(tb testing.TB, env Env) (Env, Meter) {
	ep := env.EtcdEndpoints[0]
	if !strings.Contains(ep, "://") {
		ep = "http://" + ep
	}
	return env, &etcdMeter{url: strings.TrimSuffix(ep, "/") + "/metrics"}
}

func (m *etcdMeter) Start(tb testing.TB) { m.before = m.read(tb) }

func (m *etcdMeter) Stop(tb testing.TB) Counts {
	after := m.read(tb)
	c := Counts{"req": 0, "inflight": after[inflightKey]}
	for method, v := range after {
		if method == inflightKey {
			continue
		}
		if d := v - m.before[method]; d != 0 {
			c["req"] += d
			c["req:"+method] = d
		}
	}
	return c
}

// inflightKey is where read keeps the unary calls started and not yet
// handled.
const inflightKey = "\x00inflight"

func (m *etcdMeter) read(tb testing.TB) map[string]float64 {
	tb.Helper()
	resp, err := http.Get(m.url)
	if err != nil {
		tb.Fatalf("etcd meter: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, "{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		if strings.Contains(labels, `grpc_type="unary"`) {
			switch name {
			case "grpc_server_started_total":
				out[inflightKey] += v
			case "grpc_server_handled_total":
				out[inflightKey] -= v
			}
		}
		if name != "grpc_server_msg_received_total" {
			continue
		}
		method := "?"
		for _, l := range strings.Split(labels, ",") {
			if s, ok := strings.CutPrefix(l, `grpc_method="`); ok {
				method = strings.TrimSuffix(s, `"`)
			}
		}
		out[method] += v
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("etcd meter: %v", err)
	}
	if len(out) <= 1 {
		tb.Fatalf("etcd meter: no grpc_server_msg_received_total in %s", m.url)
	}
	return out
}

// etcdVersion returns the server's version from its /version endpoint.
func etcdVersion(endpoint string) string {
	if !strings.Contains(endpoint, "://") {
		endpoint = "http://" + endpoint
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(strings.TrimSuffix(endpoint, "/") + "/version")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer resp.Body.Close()
	var v struct {
		Server string `json:"etcdserver"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || v.Server == "" {
		return "unknown"
	}
	return v.Server
}
