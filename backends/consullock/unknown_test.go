package consullock_test

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/consullock"
	"github.com/idemlock/lock/internal/testenv"
)

// faultTripper is an http.RoundTripper between a Locker's client and the
// agent that carries out the faults of a testenv.FaultSwitch on the requests
// of lock operations (transactions, and the session renewal of a same-TTL
// Refresh, made on the caller's goroutine), never on the Locker's
// background work (renewing pooled sessions, creating sessions, the
// lost-lease watch) or on blocking queries. A lost reply lets the request
// through and returns an error once the answer arrived; a stall does not
// send the request and returns when its context ends.
//
// For the stale-read test it can also play a lagging server (see
// serveStale) and hold back transaction replies (delayTxn).
type faultTripper struct {
	base   http.RoundTripper
	faults *testenv.FaultSwitch

	mu       sync.Mutex
	stale    *recorded     // answers default-consistency reads of stale.path
	delayTxn time.Duration // holds back every transaction reply this long
	gets     []uint64      // the index of every GET of stale.path since serveStale
	got      chan struct{} // signalled on each of those GETs
}

// recorded is an answer the agent gave earlier.
type recorded struct {
	path   string
	index  uint64
	status int
	header http.Header
	body   []byte
}

func (r *recorded) response(req *http.Request) *http.Response {
	return &http.Response{
		Status: strconv.Itoa(r.status) + " " + http.StatusText(r.status), StatusCode: r.status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: r.header.Clone(), Body: io.NopCloser(bytes.NewReader(r.body)),
		ContentLength: int64(len(r.body)), Request: req,
	}
}

// background reports whether the calling goroutine is the Locker's own
// background work.
func background() bool {
	return testenv.OnStack("consullock.(*pool).keep", "consullock.(*pool).createDetached",
		"consullock.(*watcher).run", "consullock.(*Locker).Close",
		"consullock.(*qkey).run", "consullock.(*queue).renew")
}

func (ft *faultTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	if resp := ft.staleAnswer(r); resp != nil {
		return resp, nil
	}
	p := r.URL.Path
	write := p == "/v1/txn" || strings.HasPrefix(p, "/v1/session/renew/") || r.Method == http.MethodDelete && strings.HasPrefix(p, "/v1/kv/")
	if ft.faults != nil && write && !background() {
		switch f := ft.faults.Take(); f {
		case testenv.LoseReply:
			resp, err := ft.base.RoundTrip(r)
			if err != nil {
				ft.faults.Rearm(f)
				return nil, err
			}
			_, _ = io.Copy(io.Discard, resp.Body) // the whole answer arrived
			_ = resp.Body.Close()
			return nil, testenv.ErrLostReply
		case testenv.Stall:
			return nil, ft.faults.Stall(r.Context())
		}
	}
	resp, err := ft.base.RoundTrip(r)
	if p == "/v1/txn" {
		ft.mu.Lock()
		d := ft.delayTxn
		ft.mu.Unlock()
		if d > 0 {
			time.Sleep(d) // a slow network on the way back
		}
	}
	return resp, err
}

// staleAnswer returns the recorded answer for a default-consistency read of
// its key, as a lagging server (a leader just elected) gives it: a blocking
// query is answered at once when the server's index is above the one it
// waits from. Consistent reads are never stale.
func (ft *faultTripper) staleAnswer(r *http.Request) *http.Response {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	s := ft.stale
	if s == nil || r.Method != http.MethodGet || r.URL.Path != "/v1/kv/"+s.path {
		return nil
	}
	q := r.URL.Query()
	index, _ := strconv.ParseUint(q.Get("index"), 10, 64)
	ft.gets = append(ft.gets, index)
	select {
	case ft.got <- struct{}{}:
	default:
	}
	if q.Has("consistent") || index >= s.index {
		return nil
	}
	return s.response(r)
}

// serveStale records the agent's answer for the KV key path now, and from
// then on serves it to default-consistency reads that it would answer.
func (ft *faultTripper) serveStale(t *testing.T, addr, path string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+"/v1/kv/"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ft.base.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	index, err := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	if err != nil {
		t.Fatalf("X-Consul-Index of the recorded answer: %v", err)
	}
	ft.mu.Lock()
	ft.stale = &recorded{path: path, index: index, status: resp.StatusCode, header: resp.Header.Clone(), body: body}
	ft.got = make(chan struct{}, 1)
	ft.mu.Unlock()
}

// newFaultyLocker is conformance.Config.NewFaultyLocker: an independent
// Locker whose client carries out the faults armed on the returned switch.
func newFaultyLocker(t *testing.T, opts ...consullock.Option) (*consullock.Locker, *testenv.FaultSwitch, *faultTripper) {
	t.Helper()
	ft := &faultTripper{faults: testenv.NewFaultSwitch(t)}
	l, _ := newLockerWith(t, testenv.ConsulAddr(t), func(base http.RoundTripper) http.RoundTripper {
		ft.base = base
		return ft
	}, opts...)
	return l, ft.faults, ft
}

// The lost-lease watch must never act on a read older than the lease's own
// last write. Here a Refresh moves the lock to a session of another TTL
// (the lease's own write) while the agent answers default-consistency
// reads of the key like a lagging leader: with its view from before the
// take (the key absent). The watch must not take that for a loss and
// destroy the session that holds the key. Regression test of issue 13,
// finding 7 (the watch re-read with index 0 and default consistency after
// the lease's own writes).
func TestLossWatchIgnoresStaleReads(t *testing.T) {
	checkNoSessions(t)
	k := key(t, "k")
	path := consullock.DefaultPrefix + "lock/" + consullock.EscapeKey(k)
	l, _, ft := newFaultyLocker(t)
	admin, _ := newClient(t)
	ctx := t.Context()
	ft.serveStale(t, testenv.ConsulAddr(t), path) // the key absent, before the take
	le, err := l.TryAcquire(ctx, k, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lost := le.(lock.LossNotifier).Lost()
	// The move's reply comes back slowly, so the watch sees the key move
	// to the new session while the move is still in flight.
	ft.mu.Lock()
	ft.delayTxn = 300 * time.Millisecond
	ft.mu.Unlock()
	if err := le.Refresh(ctx, 3*time.Second); err != nil {
		t.Fatalf("Refresh to another TTL (a move): %v", err)
	}
	ft.mu.Lock()
	ft.delayTxn = 0
	ft.mu.Unlock()
	pair, _, err := admin.KV().Get(path, nil)
	if err != nil || pair == nil {
		t.Fatalf("reading the moved key: %v, %v", pair, err)
	}
	moved := pair.ModifyIndex
	// Wait until the watch blocks from the move's index (it saw the move
	// and found the key its own), or declares the lease lost.
	deadline := time.After(5 * time.Second)
watch:
	for {
		ft.mu.Lock()
		gets := ft.gets
		ft.mu.Unlock()
		for _, i := range gets {
			if i >= moved {
				break watch
			}
		}
		select {
		case <-lost:
			t.Fatalf("the watch took a stale read for a loss after the lease's own move (reads at index %v)", gets)
		case <-ft.got:
		case <-deadline:
			t.Fatalf("the watch never waited from the move's index %d (reads at index %v)", moved, gets)
		}
	}
	select {
	case <-lost:
		t.Fatal("the lease was reported lost although it holds its key")
	default:
	}
	if err := le.Refresh(ctx, 3*time.Second); err != nil {
		t.Errorf("Refresh after the move: %v, want the lease still held", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Errorf("Release: %v", err)
	}
}

// A Release whose reply was lost went through, and another Locker took the
// key: the lease reports ErrNotHeld from then on and leaves the new holder
// alone.
func TestReleaseReplyLost(t *testing.T) {
	checkNoSessions(t)
	a, faults, _ := newFaultyLocker(t)
	b, _ := newLocker(t)
	testenv.LoseReleaseReply(t, a, faults, b, key(t, "k"), 5*time.Second, false)
}

// Concurrent calls on one lease never misreport ownership.
func TestConcurrentLeaseCalls(t *testing.T) {
	checkNoSessions(t)
	a, _ := newLocker(t)
	b, _ := newLocker(t)
	testenv.RaceLeaseCalls(t, a, b, key(t, "k"), 5*time.Second, 50)
}
