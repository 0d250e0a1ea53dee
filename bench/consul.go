package bench

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock/backends/consullock"
	"github.com/idemlock/lock/internal/testenv"
)

// consulTryStop bounds api.Lock's one attempt (see consulLockClient.Try).
const consulTryStop = 10 * time.Millisecond

func consulBackend() Backend {
	return Backend{
		Name: "consul",
		Env:  func(tb testing.TB) Env { return Env{ConsulAddr: testenv.ConsulAddr(tb)} },
		Libs: []Lib{
			{
				Name: "idemlock",
				Desc: "idemlock consullock: a take is one txn with a pooled session, a release one txn; waiters use blocking queries",
				Setup: consulSetup(func(c *api.Client) (Client, func()) {
					l, err := consullock.New(c)
					if err != nil {
						panic(err) // a non-nil client and no options: cannot happen
					}
					return idemClient{l}, func() { _ = l.Close() }
				}),
			},
			{
				Name:        "idemlock-queued",
				Label:       "idemlock (WithQueue)",
				Desc:        "idemlock consullock with WithQueue: waiters queue as entry keys ordered by CreateIndex, one blocking query per client and key, a release wakes only the head",
				HandoffOnly: true,
				Scaling:     true,
				Setup: consulSetup(func(c *api.Client) (Client, func()) {
					l, err := consullock.New(c, consullock.WithQueue())
					if err != nil {
						panic(err) // a non-nil client and a valid option: cannot happen
					}
					return idemClient{l}, func() { _ = l.Close() }
				}),
			},
			{
				Name:  "consul-api-lock",
				Label: "api.Lock",
				Desc: "hashicorp/consul/api v1.34.4 Lock (the api.Lock recipe: a session per lock, read, acquire, " +
					"a monitoring query, release, session destroy), default options; its one-attempt form is LockTryOnce " +
					"with a stop channel closed 10 ms into the attempt (without it, a miss that races a release sleeps 5 s)",
				Setup: consulSetup(func(c *api.Client) (Client, func()) { return consulLockClient{c}, func() {} }),
			},
		},
		Meter:      newConsulMeter,
		Load:       newConsulLoad,
		Background: 250 * time.Millisecond, // consullock's idle-session renewals at TTL (30 s)
	}
}

// consulSetup returns a Setup whose clients each have a Consul client (and
// connection pool) of their own. Both libraries get the same client
// configuration: the api package's defaults with up to 64 idle connections
// kept (its default, GOMAXPROCS+1, would reopen connections under the
// 32-goroutine workload).
func consulSetup(wrap func(*api.Client) (Client, func())) func(testing.TB, Env) func() Client {
	return func(tb testing.TB, env Env) func() Client {
		return func() Client {
			cfg := api.DefaultConfig()
			cfg.Address, cfg.Scheme, cfg.Token, cfg.TokenFile = env.ConsulAddr, "http", "", ""
			cfg.Transport.MaxIdleConnsPerHost = 64
			if env.ConsulWrap != nil {
				cfg.HttpClient = &http.Client{Transport: env.ConsulWrap(cfg.Transport)}
			}
			c, err := api.NewClient(cfg)
			if err != nil {
				tb.Fatalf("consul client: %v", err)
			}
			cl, closeFn := wrap(c)
			tb.Cleanup(func() {
				closeFn()
				cfg.Transport.CloseIdleConnections()
			})
			return cl
		}
	}
}

// consulLockClient drives api.Lock.
type consulLockClient struct{ c *api.Client }

// Try is api.Lock with LockTryOnce, bounded: a miss that races a release
// would otherwise take 5 s (when the acquire fails and the re-read finds
// the key unlocked, api.Lock assumes a lock-delay and sleeps
// DefaultLockRetryTime, LockTryOnce or not), so a stop channel closes
// consulTryStop after the attempt began. api.Lock checks that channel
// before its first read, so the session is created here, as api.Lock
// would (same TTL, default lock-delay), and destroyed in the background
// after the release, as api.Lock's renewal goroutine does: the requests
// are api.Lock's own.
func (c consulLockClient) Try(_ context.Context, key string) (Held, bool, error) {
	id, _, err := c.c.Session().Create(&api.SessionEntry{TTL: TTL.String()}, nil)
	if err != nil {
		return nil, false, err
	}
	lk, err := c.c.LockOpts(&api.LockOptions{Key: key, Session: id, LockTryOnce: true, LockWaitTime: time.Millisecond})
	if err != nil {
		return nil, false, err
	}
	stop := make(chan struct{})
	t := time.AfterFunc(consulTryStop, func() { close(stop) })
	defer t.Stop()
	ch, err := lk.Lock(stop)
	if err != nil || ch == nil {
		go c.destroy(id)
		return nil, false, err
	}
	return consulHeld{lk: lk, destroy: func() { go c.destroy(id) }}, true, nil
}

func (c consulLockClient) destroy(id string) { _, _ = c.c.Session().Destroy(id, nil) }

func (c consulLockClient) Lock(ctx context.Context, key string) (Held, error) {
	lk, err := c.c.LockOpts(&api.LockOptions{Key: key, SessionTTL: TTL.String()})
	if err != nil {
		return nil, err
	}
	stop := make(chan struct{})
	defer context.AfterFunc(ctx, func() { close(stop) })()
	ch, err := lk.Lock(stop)
	switch {
	case err != nil:
		return nil, err
	case ch == nil:
		return nil, ctx.Err()
	}
	return consulHeld{lk: lk}, nil
}

type consulHeld struct {
	lk      *api.Lock
	destroy func() // the session's, when Try created it
}

func (h consulHeld) Release(context.Context) error {
	err := h.lk.Unlock()
	if h.destroy != nil {
		h.destroy()
	}
	return err
}

// consulMeter counts HTTP requests on their way to the agent, through a
// reverse proxy on loopback that the measured clients talk to. (The
// agent's own /v1/agent/metrics aggregates over 10 s intervals, too coarse
// to take a delta around a short measurement.)
type consulMeter struct{ consulCounts }

func newConsulMeter(tb testing.TB, env Env) (Env, Meter) {
	target, err := url.Parse("http://" + env.ConsulAddr)
	if err != nil {
		tb.Fatalf("consul meter: %v", err)
	}
	m := &consulMeter{}
	proxy := httputil.NewSingleHostReverseProxy(target)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	proxy.Transport = tr
	proxy.ErrorLog = log.New(io.Discard, "", 0) // cancelled blocking queries are expected
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("consul meter: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.add(consulEndpoint(r))
		proxy.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(func() {
		_ = srv.Close()
		tr.CloseIdleConnections()
	})
	env.ConsulAddr = ln.Addr().String()
	return env, m
}

// consulEndpoint names a request by method and endpoint, without the key.
func consulEndpoint(r *http.Request) string {
	p := strings.TrimPrefix(r.URL.Path, "/v1/")
	switch {
	case strings.HasPrefix(p, "kv/"):
		p = "kv"
		if r.URL.Query().Has("index") {
			p = "kv(blocking)"
		}
	case strings.HasPrefix(p, "session/renew/"):
		p = "session/renew"
	case strings.HasPrefix(p, "session/destroy/"):
		p = "session/destroy"
	}
	return r.Method + " " + p
}

// consulCounts counts requests by kind; a Meter.
type consulCounts struct {
	mu   sync.Mutex
	by   map[string]int
	from map[string]int
}

func (m *consulCounts) add(kind string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.by == nil {
		m.by = map[string]int{}
	}
	m.by[kind]++
}

func (m *consulCounts) snapshot() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.by)
}

func (m *consulCounts) Start(testing.TB) { m.from = m.snapshot() }

func (m *consulCounts) Stop(testing.TB) Counts {
	c := Counts{"req": 0}
	for k, v := range m.snapshot() {
		if d := v - m.from[k]; d != 0 {
			c["req"] += float64(d)
			c["req:"+k] = float64(d)
		}
	}
	return c
}

// consulLoad counts the HTTP requests the clients send, with a counting
// http.RoundTripper under each, by kind: consulEndpoint without a space
// (the report splits a hand-off's breakdown at spaces), a transaction with
// its verbs, e.g. "PUT:txn[lock,get-tree]".
type consulLoad struct{ consulCounts }

func newConsulLoad(_ testing.TB, env Env) (Env, Meter) {
	m := &consulLoad{}
	env.ConsulWrap = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			kind := strings.Replace(consulEndpoint(r), " ", ":", 1)
			if kind == "PUT:txn" && r.GetBody != nil {
				kind += consulTxnVerbs(r)
			}
			m.add(kind)
			return rt.RoundTrip(r)
		})
	}
	return env, m
}

// consulTxnVerbs returns the verbs of a transaction request, read from a
// copy of its body.
func consulTxnVerbs(r *http.Request) string {
	body, err := r.GetBody()
	if err != nil {
		return ""
	}
	defer body.Close()
	var ops []struct{ KV struct{ Verb string } }
	if json.NewDecoder(body).Decode(&ops) != nil {
		return ""
	}
	verbs := make([]string, len(ops))
	for i, op := range ops {
		verbs[i] = op.KV.Verb
	}
	return "[" + strings.Join(verbs, ",") + "]"
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// consulVersion returns the agent's version.
func consulVersion(addr string) string {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/v1/agent/self")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer resp.Body.Close()
	var v struct{ Config struct{ Version string } }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || v.Config.Version == "" {
		return "unknown"
	}
	return v.Config.Version
}
