package consullock_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock/backends/consullock"
	"github.com/idemlock/lock/internal/testenv"
)

// requests counts every HTTP request the test Lockers made.
var requests atomic.Int64

// runID keeps this run's keys and session names apart from other runs on
// the shared agent.
var runID = func() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

// counter is an http.RoundTripper that counts requests per endpoint.
type counter struct {
	base http.RoundTripper
	mu   sync.Mutex
	by   map[string]int
}

func (c *counter) RoundTrip(r *http.Request) (*http.Response, error) {
	requests.Add(1)
	ep, _ := endpoint(r.URL.Path)
	c.mu.Lock()
	c.by[ep]++
	c.mu.Unlock()
	return c.base.RoundTrip(r)
}

// endpoint names the endpoint of an HTTP API path as the counter counts
// it ("txn", "kv", "session/create", "session/renew", ...), with the
// session ID of a renew or destroy.
func endpoint(path string) (ep, session string) {
	switch {
	case strings.HasPrefix(path, "/v1/kv/"):
		return "kv", ""
	case strings.HasPrefix(path, "/v1/session/renew/"):
		return "session/renew", strings.TrimPrefix(path, "/v1/session/renew/")
	case strings.HasPrefix(path, "/v1/session/destroy/"):
		return "session/destroy", strings.TrimPrefix(path, "/v1/session/destroy/")
	}
	return strings.TrimPrefix(path, "/v1/"), ""
}

// snapshot returns the counts so far.
func (c *counter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.by))
	for k, v := range c.by {
		out[k] = v
	}
	return out
}

// diff returns what changed between two snapshots.
func diff(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// sessionLog is an http.RoundTripper that records the life of each
// session its client creates or renews: when each successful create or
// renewal was sent and when its answer was read (its body closed, after
// which the pool records the renewal), and when a destroy was sent; and
// each create, with the name it gave the session.
type sessionLog struct {
	base    http.RoundTripper
	mu      sync.Mutex
	creates []created           // in the order sent
	byID    map[string]*history // sessions seen created or renewed
}

// created is a session create: when it was sent, the name it gave the
// session and, if it succeeded, the session's ID.
type created struct {
	sent time.Time
	name string
	id   string
}

// history is what a sessionLog saw of one session.
type history struct {
	stamps    []*stamp  // its successful create and renewals, in the order sent
	destroyed time.Time // when a destroy of it was first sent; zero if none
}

// stamp is one successful create or renewal of a session.
type stamp struct {
	sent, answered time.Time // answered is zero until the answer was read
}

func newSessionLog(base http.RoundTripper) *sessionLog {
	return &sessionLog{base: base, byID: map[string]*history{}}
}

func (s *sessionLog) RoundTrip(r *http.Request) (*http.Response, error) {
	ep, id := endpoint(r.URL.Path)
	var name string
	if ep == "session/create" {
		name = sessionNameOf(r)
	}
	sent := time.Now()
	if ep == "session/destroy" {
		s.mu.Lock()
		if h := s.historyLocked(id); h.destroyed.IsZero() {
			h.destroyed = sent
		}
		s.mu.Unlock()
	}
	resp, err := s.base.RoundTrip(r)
	if ep != "session/create" && ep != "session/renew" {
		return resp, err
	}
	ok := err == nil && resp.StatusCode == http.StatusOK
	if ep == "session/create" {
		if ok {
			// The ID is in the answer: read it, and give the client a copy.
			body, rerr := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			resp.Body = io.NopCloser(bytes.NewReader(body))
			var out struct{ ID string }
			if rerr == nil && json.Unmarshal(body, &out) == nil {
				id = out.ID
			}
		}
		s.mu.Lock()
		s.creates = append(s.creates, created{sent: sent, name: name, id: id})
		s.mu.Unlock()
	}
	if !ok || id == "" {
		return resp, err
	}
	st := &stamp{sent: sent}
	s.mu.Lock()
	h := s.historyLocked(id)
	h.stamps = append(h.stamps, st)
	s.mu.Unlock()
	resp.Body = &onClose{ReadCloser: resp.Body, f: func() {
		s.mu.Lock()
		st.answered = time.Now()
		s.mu.Unlock()
	}}
	return resp, nil
}

// sessionNameOf returns the Name in the body of session create r, read
// from a copy (GetBody) so that r is sent untouched; "" if it has none.
func sessionNameOf(r *http.Request) string {
	if r.GetBody == nil {
		return ""
	}
	body, err := r.GetBody()
	if err != nil {
		return ""
	}
	defer body.Close()
	var in struct{ Name string }
	if json.NewDecoder(body).Decode(&in) != nil {
		return ""
	}
	return in.Name
}

// createsIn returns the session creates sent within sp.
func (s *sessionLog) createsIn(sp span) []created {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []created
	for _, cr := range s.creates {
		if !cr.sent.Before(sp.start) && !cr.sent.After(sp.end) {
			out = append(out, cr)
		}
	}
	return out
}

// historyLocked returns the history of session id, made if need be. s.mu
// is held.
func (s *sessionLog) historyLocked(id string) *history {
	h := s.byID[id]
	if h == nil {
		h = &history{}
		s.byID[id] = h
	}
	return h
}

// onClose is a response body that calls f when first closed.
type onClose struct {
	io.ReadCloser
	once sync.Once
	f    func()
}

func (b *onClose) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.f)
	return err
}

// newClient returns a Consul client of its own (its own connections) for
// the test agent, counting its requests; its idle connections are closed
// at the end of the test.
func newClient(tb testing.TB) (*api.Client, *counter) {
	tb.Helper()
	return newClientAt(tb, testenv.ConsulAddr(tb))
}

// newClientAt is newClient for the agent at addr.
func newClientAt(tb testing.TB, addr string) (*api.Client, *counter) {
	tb.Helper()
	return newClientWith(tb, addr, nil)
}

// newClientWith is newClientAt with wrap (when not nil) between the client
// and its counting transport.
func newClientWith(tb testing.TB, addr string, wrap func(http.RoundTripper) http.RoundTripper) (*api.Client, *counter) {
	tb.Helper()
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Scheme, cfg.Token, cfg.TokenFile = addr, "http", "", ""
	tr := cfg.Transport
	tb.Cleanup(tr.CloseIdleConnections)
	c := &counter{base: tr, by: map[string]int{}}
	var rt http.RoundTripper = c
	if wrap != nil {
		rt = wrap(c)
	}
	cfg.HttpClient = &http.Client{Transport: rt}
	client, err := api.NewClient(cfg)
	if err != nil {
		tb.Fatalf("consul client: %v", err)
	}
	return client, c
}

// sessionName names the sessions of a top-level test, so that a test can
// check that none of its sessions outlived it.
func sessionName(tb testing.TB) string {
	name, _, _ := strings.Cut(tb.Name(), "/")
	return "idemlock-test " + runID + " " + name
}

// newLocker returns a Locker on its own client, for an agent whose
// session_ttl_min is 1s, closed at the end of the test.
func newLocker(tb testing.TB, opts ...consullock.Option) (*consullock.Locker, *counter) {
	tb.Helper()
	return newLockerAt(tb, testenv.ConsulAddr(tb), opts...)
}

// newLockerAt is newLocker for the agent at addr.
func newLockerAt(tb testing.TB, addr string, opts ...consullock.Option) (*consullock.Locker, *counter) {
	tb.Helper()
	return newLockerWith(tb, addr, nil, opts...)
}

// newLockerWith is newLockerAt on a client made by newClientWith.
func newLockerWith(tb testing.TB, addr string, wrap func(http.RoundTripper) http.RoundTripper, opts ...consullock.Option) (*consullock.Locker, *counter) {
	tb.Helper()
	client, c := newClientWith(tb, addr, wrap)
	all := append([]consullock.Option{consullock.WithMinTTL(time.Second), consullock.WithSessionName(sessionName(tb))}, opts...)
	l, err := consullock.New(client, all...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return l, c
}

// key returns a key unique to this run and test. Each run of a test
// (-count) has keys of its own: records outlive a run, and a later run
// would find them.
func key(tb testing.TB, name string) string {
	id, ok := testIDs.Load(tb)
	if !ok {
		id, _ = testIDs.LoadOrStore(tb, strconv.FormatInt(nextTestID.Add(1), 10))
	}
	return "idemlock-test/" + runID + "/" + id.(string) + "/" + tb.Name() + "/" + name
}

// testIDs numbers the tests that made keys (testing.TB to its number).
var (
	testIDs    sync.Map
	nextTestID atomic.Int64
)

// sessions lists the agent's sessions whose names start with prefix.
func sessions(tb testing.TB, client *api.Client, prefix string) []*api.SessionEntry {
	tb.Helper()
	all, _, err := client.Session().List((&api.QueryOptions{}).WithContext(context.Background()))
	if err != nil {
		tb.Fatalf("listing sessions: %v", err)
	}
	var out []*api.SessionEntry
	for _, s := range all {
		if strings.HasPrefix(s.Name, prefix) {
			out = append(out, s)
		}
	}
	return out
}

// checkNoSessions registers a check, run after the test's other clean-ups
// (its Lockers' Close), that no lock session of the test is left on the
// agent. Retention sessions are meant to outlive their Locker and are not
// counted.
func checkNoSessions(t *testing.T) {
	t.Helper()
	client, _ := newClient(t)
	name := sessionName(t)
	t.Cleanup(func() {
		// Sessions of leases that expired are invalidated by the server
		// within twice their TTL; give the slowest test TTL (1s) that long.
		deadline := time.Now().Add(3 * time.Second)
		for {
			var left []string
			for _, s := range sessions(t, client, name) {
				if !strings.HasSuffix(s.Name, " retention") {
					left = append(left, s.ID+" (TTL "+s.TTL+")")
				}
			}
			if len(left) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d session(s) of this test outlived it: %v", len(left), left)
				return
			}
			time.Sleep(100 * time.Millisecond) // polling the agent: session expiry sends no event we could wait on here
		}
	})
}

// holder returns the session holding the lock key of k, or "".
func holder(tb testing.TB, client *api.Client, k string) string {
	tb.Helper()
	pair, _, err := client.KV().Get(consullock.DefaultPrefix+"lock/"+consullock.EscapeKey(k), nil)
	if err != nil {
		tb.Fatalf("reading the lock key of %q: %v", k, err)
	}
	if pair == nil {
		return ""
	}
	return pair.Session
}
