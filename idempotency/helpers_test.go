package idempotency_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

// newGuard returns a Guard on a fresh memlock table, scoped by the X-User
// header so tests can play several callers ("anonymous" without one).
func newGuard(t testing.TB, opts ...idempotency.Option) (*idempotency.Guard, *memlock.Locker) {
	t.Helper()
	store := memlock.New()
	base := []idempotency.Option{idempotency.WithScope(userScope)}
	g, err := idempotency.New(store, append(base, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return g, store
}

// userScope names the caller by the X-User header, "anonymous" without one.
func userScope(r *http.Request) string {
	if u := r.Header.Get("X-User"); u != "" {
		return u
	}
	return "anonymous"
}

// counter is a handler that counts its runs and answers 201 with a body
// naming the run, a Location, and headers that must never be replayed.
type counter struct {
	runs atomic.Int64
}

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := c.runs.Add(1)
	body, _ := io.ReadAll(r.Body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Location", "/orders/1")
	h.Set("Set-Cookie", "session=secret")
	h.Set("X-Private", "not on the allow-list")
	h.Set("Date", "Mon, 01 Jan 2024 00:00:00 GMT")
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, `{"run":`+itoa(n)+`,"body":"`+string(body)+`"}`)
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

type req struct {
	method, path, key, body, user string
	keys                          []string // several header lines
	noKey                         bool
	ctx                           context.Context
}

// send runs one request through h in process.
func send(h http.Handler, q req) *httptest.ResponseRecorder {
	if q.method == "" {
		q.method = http.MethodPost
	}
	if q.path == "" {
		q.path = "/orders"
	}
	r := httptest.NewRequest(q.method, q.path, strings.NewReader(q.body))
	if q.ctx != nil {
		r = r.WithContext(q.ctx)
	}
	switch {
	case q.keys != nil:
		r.Header["Idempotency-Key"] = q.keys
	case !q.noKey:
		r.Header.Set("Idempotency-Key", q.key)
	}
	if q.user != "" {
		r.Header.Set("X-User", q.user)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// post sends a POST with an idempotency key (and header pairs, name then
// value) to a test server and returns the response and its whole body.
func post(t *testing.T, srv *httptest.Server, key string, hdr ...string) (*http.Response, string) {
	t.Helper()
	r, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
	r.Header.Set("Idempotency-Key", key)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := srv.Client().Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	return resp, string(b)
}

// problem asserts that w is an RFC 9457 problem of the given status and type.
func problem(t *testing.T, w *httptest.ResponseRecorder, status int, typ string) idempotency.Problem {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d (body %s)", w.Code, status, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type %q, want application/problem+json", ct)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	var p idempotency.Problem
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("problem body %q: %v", w.Body, err)
	}
	if p.Type != typ || p.Status != status || p.Title == "" || p.Detail == "" {
		t.Errorf("problem %+v, want type %s, status %d, a title and a detail", p, typ, status)
	}
	if w.Header().Get(idempotency.ReplayedHeader) != "" {
		t.Errorf("a problem response carries %s", idempotency.ReplayedHeader)
	}
	return p
}

// spyStore wraps memlock to observe what reaches the Store and inject
// faults. It keeps memlock's Subscribe, so it is a lock.Notifier.
type spyStore struct {
	*memlock.Locker
	mu         sync.Mutex
	keys       []string
	claims     atomic.Int64
	completes  atomic.Int64
	claimErr   error
	subscribed chan struct{} // receives on every Subscribe, if not nil
}

// ClaimFingerprint goes through Claim: memlock's own would bypass it.
func (s *spyStore) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, _ []byte) (lock.Lease, []byte, []byte, error) {
	le, rec, err := s.Claim(ctx, key, ttl)
	return le, rec, nil, err
}

func (s *spyStore) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	s.claims.Add(1)
	s.mu.Lock()
	s.keys = append(s.keys, key)
	err := s.claimErr
	s.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	return s.Locker.Claim(ctx, key, ttl)
}

func (s *spyStore) Complete(ctx context.Context, le lock.Lease, rec []byte, ret time.Duration) error {
	s.completes.Add(1)
	return s.Locker.Complete(ctx, le, rec, ret)
}

func (s *spyStore) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	sub, err := s.Locker.Subscribe(ctx, key)
	if s.subscribed != nil {
		s.subscribed <- struct{}{}
	}
	return sub, err
}

func (s *spyStore) setClaimErr(err error) {
	s.mu.Lock()
	s.claimErr = err
	s.mu.Unlock()
}

// pollStore hides memlock's Subscribe: a Store that cannot notify.
type pollStore struct{ l *memlock.Locker }

func (s pollStore) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	return s.l.TryAcquire(ctx, key, ttl)
}
func (s pollStore) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	return s.l.Claim(ctx, key, ttl)
}
func (s pollStore) Complete(ctx context.Context, le lock.Lease, rec []byte, ret time.Duration) error {
	return s.l.Complete(ctx, le, rec, ret)
}

// renewTTL is the lease TTL of the tests whose lease must be renewed
// through the work on a loaded machine under -race: the Keeper renews at a
// third of it, and the two thirds left outlast a late refresh twice over.
const renewTTL = 3 * conformance.SchedulingSlack

// lostTTL is the lease TTL of the tests on a losingStore: its keeper's
// first refresh, due at a third of it, finds the lease lost; the other
// two thirds are slack for the scheduler of a loaded machine under -race,
// so that the lease is not lost by its deadline first.
const lostTTL = 3 * conformance.SchedulingSlack

// losingStore hands out leases that are lost at the first refresh: the
// holding is released underneath (as an expiry would) and Refresh reports
// ErrNotHeld, so KeepAlive cancels the work's context.
type losingStore struct {
	*memlock.Locker
	lost chan struct{} // closed when the first lease was lost
	once sync.Once
	mu   sync.Mutex
	key  string // the latest key claimed
}

func (s *losingStore) lastKey() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.key
}

type losingLease struct {
	lock.Lease
	s *losingStore
}

// ClaimFingerprint goes through Claim: memlock's own would bypass it.
func (s *losingStore) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, _ []byte) (lock.Lease, []byte, []byte, error) {
	le, rec, err := s.Claim(ctx, key, ttl)
	return le, rec, nil, err
}

func (s *losingStore) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	s.mu.Lock()
	s.key = key
	s.mu.Unlock()
	le, rec, err := s.Locker.Claim(ctx, key, ttl)
	if le != nil {
		le = &losingLease{le, s}
	}
	return le, rec, err
}

func (s *losingStore) Complete(ctx context.Context, le lock.Lease, rec []byte, ret time.Duration) error {
	if ll, ok := le.(*losingLease); ok {
		le = ll.Lease
	}
	return s.Locker.Complete(ctx, le, rec, ret)
}

func (l *losingLease) Refresh(ctx context.Context, ttl time.Duration) error {
	_ = l.Lease.Release(ctx)
	l.s.once.Do(func() { close(l.s.lost) })
	return lock.ErrNotHeld
}

var errDown = errors.New("connection refused")
