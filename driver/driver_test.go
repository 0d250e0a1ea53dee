package driver_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

const errs = driver.Name("testlock")

func TestErrorsMatchTheirSentinels(t *testing.T) {
	cause := errors.New("connection reset")
	long := strings.Repeat("k", 100)
	for _, tc := range []struct {
		name   string
		err    error
		is     []error
		isNot  []error
		substr string
	}{
		{"OpError", errs.OpError("take", "k", cause), []error{cause}, []error{lock.ErrNotHeld, lock.ErrClosed}, `testlock: take "k": connection reset`},
		{"OpError long key", errs.OpError("take", long, cause), []error{cause}, nil, `testlock: take "` + strings.Repeat("k", 64) + `…": connection reset`},
		{"OpError no key", errs.OpError("ping", "", cause), []error{cause}, nil, `testlock: ping: connection reset`},
		{"NotHeld", errs.NotHeld("release", "k"), []error{lock.ErrNotHeld}, []error{lock.ErrNotAcquired, lock.ErrInvalidArgument}, `testlock: release "k": lock: lease not held`},
		{"NotHeldWhy", errs.NotHeldWhy("refresh", "k", "it expired"), []error{lock.ErrNotHeld}, nil, `lease not held: it expired`},
		{"Found error", errs.Found("force release", "k", true, cause), []error{cause}, []error{lock.ErrNotHeld}, `testlock: force release "k": connection reset`},
		{"Found nothing", errs.Found("delete record", "k", false, nil), []error{lock.ErrNotHeld}, nil, `testlock: delete record "k": lock: lease not held`},
		{"Closed", errs.Closed("take", "k"), []error{lock.ErrClosed}, []error{lock.ErrNotHeld}, `testlock: take "k": lock: Locker closed`},
		{"RecordTooLarge", errs.RecordTooLarge("k", 10, 5), []error{lock.ErrRecordTooLarge, lock.ErrInvalidArgument}, []error{lock.ErrNotHeld}, `10 bytes, over the limit of 5`},
		{"InvalidArgument", errs.InvalidArgument("prefix %q contains %q", "a{", "{"), []error{lock.ErrInvalidArgument}, []error{lock.ErrInvalidURL}, `testlock: prefix "a{" contains "{"`},
		{"URLError", errs.URLError("bad port: %w", cause), []error{lock.ErrInvalidURL, cause}, []error{lock.ErrInvalidArgument}, `testlock: bad port: connection reset`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, s := range tc.is {
				if !errors.Is(tc.err, s) {
					t.Errorf("%v does not match %v", tc.err, s)
				}
			}
			for _, s := range tc.isNot {
				if errors.Is(tc.err, s) {
					t.Errorf("%v matches %v", tc.err, s)
				}
			}
			if !strings.Contains(tc.err.Error(), tc.substr) {
				t.Errorf("message %q lacks %q", tc.err, tc.substr)
			}
		})
	}
}

func TestFoundSomething(t *testing.T) {
	if err := errs.Found("force release", "k", true, nil); err != nil {
		t.Errorf("Found of a deletion: %v, want nil", err)
	}
}

func TestErrorAs(t *testing.T) {
	err := fmt.Errorf("outer: %w", errs.NotHeld("complete", "invoice/42"))
	var e *driver.Error
	if !errors.As(err, &e) {
		t.Fatalf("errors.As(%v, *driver.Error) is false", err)
	}
	if e.Backend != errs || e.Op != "complete" || e.Key != "invoice/42" || e.Err != lock.ErrNotHeld {
		t.Errorf("got %+v", e)
	}
}

func TestDisplayKey(t *testing.T) {
	if got := driver.DisplayKey("short"); got != "short" {
		t.Errorf("DisplayKey(short) = %q", got)
	}
	k := strings.Repeat("x", driver.MaxDisplayKey)
	if got := driver.DisplayKey(k); got != k {
		t.Errorf("a key of exactly %d bytes was cut: %q", driver.MaxDisplayKey, got)
	}
	if got := driver.DisplayKey(k + "y"); got != k+"…" {
		t.Errorf("DisplayKey(%d bytes) = %q", len(k)+1, got)
	}
}

func TestGateChecks(t *testing.T) {
	ctx := t.Context()
	g := &driver.Gate{Name: errs}
	if err := g.Check(ctx, "take", "k", time.Second); err != nil {
		t.Fatalf("Check of good arguments: %v", err)
	}
	if err := g.Check(ctx, "take", "", time.Second); !errors.Is(err, lock.ErrInvalidKey) {
		t.Errorf("Check of an empty key: %v, want ErrInvalidKey", err)
	}
	if err := g.Check(ctx, "take", "k", 0); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("Check of a zero TTL: %v, want ErrInvalidTTL", err)
	}
	var nilCtx context.Context
	if err := g.CheckContext(nilCtx, "ping"); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("CheckContext(nil): %v, want ErrInvalidArgument", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := g.CheckKey(done, "inspect", "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("CheckKey with a cancelled context: %v, want context.Canceled", err)
	}
	if err := g.CheckClaim(ctx, "k", time.Second, make([]byte, driver.MaxFingerprint)); err != nil {
		t.Errorf("CheckClaim of a %d-byte fingerprint: %v", driver.MaxFingerprint, err)
	}
	if err := g.CheckClaim(ctx, "k", time.Second, make([]byte, driver.MaxFingerprint+1)); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("CheckClaim of a long fingerprint: %v, want ErrInvalidArgument", err)
	}
	if err := g.CheckTicket(ctx, "k", time.Second, false); err != nil {
		t.Errorf("CheckTicket of an open ticket: %v", err)
	}
	if err := g.CheckTicket(ctx, "k", time.Second, true); !errors.Is(err, lock.ErrInvalidArgument) || !strings.Contains(err.Error(), "closed ticket") {
		t.Errorf("CheckTicket of a closed ticket: %v, want ErrInvalidArgument naming the closed ticket", err)
	}
	if err := g.CheckTicket(ctx, "k", 0, false); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("CheckTicket of a zero TTL: %v, want ErrInvalidTTL", err)
	}
	var te *lock.TTLError
	if err := g.CheckComplete(ctx, -time.Second); !errors.As(err, &te) || !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("CheckComplete of a negative retention: %v, want a *lock.TTLError", err)
	}
	if g.IsClosed() {
		t.Fatal("a new Gate is closed")
	}
	_ = g.Close(nil)
	for name, err := range map[string]error{
		"Check":         g.Check(ctx, "take", "k", time.Second),
		"CheckKey":      g.CheckKey(ctx, "inspect", "k"),
		"CheckContext":  g.CheckContext(ctx, "ping"),
		"CheckClaim":    g.CheckClaim(ctx, "k", time.Second, nil),
		"CheckComplete": g.CheckComplete(ctx, time.Second),
	} {
		if !errors.Is(err, lock.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	// Bad arguments still win over a closed Gate, so a caller's bug is
	// reported as such.
	if err := g.Check(ctx, "take", "", time.Second); !errors.Is(err, lock.ErrInvalidKey) {
		t.Errorf("Check of an empty key after Close: %v, want ErrInvalidKey", err)
	}
}

func TestGateServeAfterClose(t *testing.T) {
	ctx := t.Context()
	g := &driver.Gate{Name: errs, ServeAfterClose: true}
	_ = g.Close(nil)
	if !g.IsClosed() {
		t.Fatal("IsClosed after Close is false")
	}
	if err := g.Check(ctx, "take", "k", time.Second); err != nil {
		t.Errorf("Check after Close with ServeAfterClose: %v, want nil", err)
	}
	if err := g.CheckClaim(ctx, "k", time.Second, make([]byte, driver.MaxFingerprint+1)); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("CheckClaim of a long fingerprint with ServeAfterClose: %v, want ErrInvalidArgument", err)
	}
}

func TestGateCloseRunsOnce(t *testing.T) {
	g := &driver.Gate{Name: errs}
	boom := errors.New("boom")
	var runs atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			err := g.Close(func() error {
				if !g.IsClosed() {
					t.Error("Close ran its function before marking the Gate closed")
				}
				runs.Add(1)
				return boom
			})
			if err != boom {
				t.Errorf("Close returned %v, want the first Close's error", err)
			}
		})
	}
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Errorf("Close's function ran %d times, want once", n)
	}
}

// testLease is a backend's lease type built on driver.Lease.
type testLease struct {
	driver.Lease
}

func (le *testLease) Refresh(context.Context, time.Duration) error { return nil }
func (le *testLease) Release(context.Context) error                { return nil }

// otherLease is a lease type of some other backend.
type otherLease struct{ testLease }

func newLease(g *driver.Gate) *testLease {
	le := &testLease{}
	le.Init(g, "k", 7, time.Now(), time.Minute)
	return le
}

func TestOwn(t *testing.T) {
	g, g2 := &driver.Gate{Name: errs}, &driver.Gate{Name: errs}
	le := newLease(g)
	got, err := driver.Own[*testLease](g, "Complete", le)
	if err != nil || got != le {
		t.Fatalf("Own of the Locker's own lease = %v, %v", got, err)
	}
	var nilLease *testLease
	for name, ls := range map[string]lock.Lease{
		"nil":                nil,
		"typed nil":          nilLease,
		"another Locker's":   newLease(g2),
		"another type":       &otherLease{},
		"another type's nil": (*otherLease)(nil),
	} {
		if _, err := driver.Own[*testLease](g, "Complete", ls); !errors.Is(err, lock.ErrInvalidArgument) || !strings.Contains(err.Error(), "Complete") {
			t.Errorf("Own of %s lease: %v, want ErrInvalidArgument naming Complete", name, err)
		}
	}
}

func TestLeaseBase(t *testing.T) {
	g := &driver.Gate{Name: errs}
	sent := time.Now()
	le := &testLease{}
	le.Init(g, "invoice/42", 99, sent, time.Minute)
	if le.Key() != "invoice/42" || le.Token() != 99 {
		t.Errorf("Key, Token = %q, %d", le.Key(), le.Token())
	}
	if got := le.Deadline(); !got.Equal(sent.Add(time.Minute)) {
		t.Errorf("Deadline = %v, want sent + TTL %v", got, sent.Add(time.Minute))
	}
	var _ lock.Deadliner = le
	if le.State() != driver.Held || le.Check("refresh") != nil {
		t.Fatalf("a new lease is %v (Check: %v), want held", le.State(), le.Check("refresh"))
	}
	if !le.Lose() || le.State() != driver.Lost {
		t.Fatalf("Lose: state %v, want lost", le.State())
	}
	if le.Lose() {
		t.Error("Lose of a lost lease reported a change")
	}
	if err := le.Check("refresh"); !errors.Is(err, lock.ErrNotHeld) || !strings.Contains(err.Error(), `refresh "invoice/42"`) {
		t.Errorf("Check of a lost lease: %v, want ErrNotHeld naming the op and key", err)
	}
}

func TestDeadlineFollowsTheLatestSentRequest(t *testing.T) {
	g := &driver.Gate{Name: errs}
	t0 := time.Now()
	le := &testLease{}
	le.Init(g, "k", 1, t0, time.Second)
	le.Extend(t0.Add(2*time.Second), time.Second) // a later refresh
	want := t0.Add(3 * time.Second)
	le.Extend(t0.Add(time.Second), time.Hour) // an earlier one, answered late
	if got := le.Deadline(); !got.Equal(want) {
		t.Errorf("an earlier request's late reply moved the deadline to %v, want %v", got.Sub(t0), want.Sub(t0))
	}
	le.Extend(t0.Add(4*time.Second), 10*time.Millisecond) // a later, shorter refresh
	if got, want := le.Deadline(), t0.Add(4*time.Second+10*time.Millisecond); !got.Equal(want) {
		t.Errorf("a later refresh with a shorter TTL: deadline %v, want %v", got.Sub(t0), want.Sub(t0))
	}
}

func TestDeadlineNeverMovesBackUnderConcurrentRefreshes(t *testing.T) {
	g := &driver.Gate{Name: errs}
	t0 := time.Now()
	le := &testLease{}
	le.Init(g, "k", 1, t0, time.Second)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// Refreshes with one TTL, sent at increasing times, answered in any
	// order: the deadline only moves forward, and ends at the latest.
	const n = 200
	wg.Go(func() {
		prev := le.Deadline()
		for {
			select {
			case <-stop:
				return
			default:
			}
			d := le.Deadline()
			if d.Before(prev) {
				t.Errorf("deadline moved back from %v to %v", prev.Sub(t0), d.Sub(t0))
				return
			}
			prev = d
		}
	})
	var refreshers sync.WaitGroup
	for i := range n {
		refreshers.Go(func() { le.Extend(t0.Add(time.Duration(i)*time.Millisecond), time.Second) })
	}
	refreshers.Wait()
	close(stop)
	wg.Wait()
	if got, want := le.Deadline(), t0.Add((n-1)*time.Millisecond+time.Second); !got.Equal(want) {
		t.Errorf("final deadline %v, want the latest-sent request's %v", got.Sub(t0), want.Sub(t0))
	}
}

func TestEndSerialisesEndingCalls(t *testing.T) {
	g := &driver.Gate{Name: errs}
	le := newLease(g)
	entered := make(chan struct{})
	unblock := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- le.End(t.Context(), "release", func() error {
			close(entered)
			<-unblock
			return nil
		})
	}()
	<-entered
	if s := le.State(); s != driver.Releasing {
		t.Errorf("state while a release runs: %v, want releasing", s)
	}
	if err := le.Check("refresh"); err != nil {
		t.Errorf("Check while a release runs: %v, want nil (the outcome is not known yet)", err)
	}
	second := make(chan error, 1)
	var ran atomic.Bool
	go func() {
		second <- le.End(t.Context(), "complete", func() error { ran.Store(true); return nil })
	}()
	select {
	case err := <-second:
		t.Fatalf("a second ending call returned %v before the first ended", err)
	case <-time.After(20 * time.Millisecond):
	}
	close(unblock)
	if err := <-first; err != nil {
		t.Fatalf("first End: %v", err)
	}
	if err := <-second; !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("second End after the first released: %v, want ErrNotHeld", err)
	}
	if ran.Load() {
		t.Error("the second End ran its request on a released lease")
	}
	if s := le.State(); s != driver.Released {
		t.Errorf("state after release: %v, want released", s)
	}
}

func TestEndOutcomes(t *testing.T) {
	g := &driver.Gate{Name: errs}
	ctx := t.Context()
	unknown := errors.New("i/o timeout")

	le := newLease(g)
	if err := le.End(ctx, "release", func() error { return unknown }); err != unknown {
		t.Fatalf("End returned %v, want fn's error", err)
	}
	if s := le.State(); s != driver.Held {
		t.Errorf("after an unknown outcome: %v, want held (a retry asks the server)", s)
	}
	if err := le.End(ctx, "release", func() error { return le.NotHeld("release") }); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("End: %v", err)
	}
	if s := le.State(); s != driver.Released {
		t.Errorf("after a not-held outcome: %v, want released", s)
	}

	// A lost lease still asks the server: its earlier release may have gone
	// through.
	le = newLease(g)
	le.Lose()
	ran := false
	if err := le.End(ctx, "release", func() error { ran = true; return nil }); err != nil || !ran {
		t.Errorf("End of a lost lease: %v (ran %v), want fn run and nil", err, ran)
	}
	if s := le.State(); s != driver.Released {
		t.Errorf("after releasing a lost lease: %v, want released", s)
	}

	// A loss found while a release is in flight with an unknown outcome
	// stays a loss.
	le = newLease(g)
	_ = le.End(ctx, "release", func() error { le.Lose(); return unknown })
	if s := le.State(); s != driver.Lost {
		t.Errorf("loss during a release with an unknown outcome: %v, want lost", s)
	}
}

func TestStateUnderConcurrentCalls(t *testing.T) {
	// Many goroutines end, lose and check one lease at once: exactly one
	// ending call's request runs to success, and the state ends Released.
	g := &driver.Gate{Name: errs}
	for range 50 {
		le := newLease(g)
		var successes atomic.Int32
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				switch i % 3 {
				case 0:
					if le.End(t.Context(), "release", func() error { successes.Add(1); return nil }) == nil {
						return
					}
				case 1:
					le.Lose()
				default:
					_ = le.Check("refresh")
					_ = le.State()
				}
			})
		}
		wg.Wait()
		if n := successes.Load(); n != 1 {
			t.Fatalf("%d ending requests succeeded, want exactly 1", n)
		}
		if s := le.State(); s != driver.Released {
			t.Fatalf("final state %v, want released", s)
		}
	}
}

func TestSerialHonoursContext(t *testing.T) {
	g := &driver.Gate{Name: errs}
	le := newLease(g)
	entered, unblock := make(chan struct{}), make(chan struct{})
	go func() {
		_ = le.Serial(t.Context(), func() error { close(entered); <-unblock; return nil })
	}()
	<-entered
	defer close(unblock)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	ran := false
	if err := le.Serial(ctx, func() error { ran = true; return nil }); !errors.Is(err, context.DeadlineExceeded) || ran {
		t.Errorf("Serial waiting past its context: %v (ran %v), want DeadlineExceeded and not run", err, ran)
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[driver.State]string{driver.Held: "held", driver.Releasing: "releasing", driver.Released: "released", driver.Lost: "lost", 9: "State(9)"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", int32(s), s, want)
		}
	}
}

type config struct{ prefix string }
type option func(*config) error

func TestApply(t *testing.T) {
	bad := func(why string) option { return func(*config) error { return errs.InvalidArgument("%s", why) } }
	set := func(p string) option { return func(c *config) error { c.prefix = p; return nil } }
	var c config
	if err := driver.Apply(&c, []option{nil, set("a:"), set("b:")}); err != nil || c.prefix != "b:" {
		t.Fatalf("Apply of good options: %v, prefix %q", err, c.prefix)
	}
	err := driver.Apply(&c, []option{bad("first"), set("c:"), bad("second")})
	if !errors.Is(err, lock.ErrInvalidArgument) || !strings.Contains(err.Error(), "first") || !strings.Contains(err.Error(), "second") {
		t.Errorf("Apply of bad options: %v, want both reported, matching ErrInvalidArgument", err)
	}
}

func TestQuery(t *testing.T) {
	u, _ := url.Parse("x://h:1/?timeout=500ms&pool=3&tls=true&prefix=p:&extra=1&addr=a&addr=b")
	q, err := errs.Query(u)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := q.Duration("timeout", time.Second); err != nil || d != 500*time.Millisecond {
		t.Errorf("Duration = %v, %v", d, err)
	}
	if d, err := q.Duration("dial", time.Second); err != nil || d != time.Second {
		t.Errorf("Duration of a missing option = %v, %v, want the default", d, err)
	}
	if n, err := q.Int("pool", 1); err != nil || n != 3 {
		t.Errorf("Int = %v, %v", n, err)
	}
	if b, err := q.Bool("tls", false); err != nil || !b {
		t.Errorf("Bool = %v, %v", b, err)
	}
	if s, err := q.String("prefix", ""); err != nil || s != "p:" {
		t.Errorf("String = %q, %v", s, err)
	}
	if _, err := q.String("addr", ""); !errors.Is(err, lock.ErrInvalidURL) || !strings.Contains(err.Error(), "addr given 2 times") {
		t.Errorf("String of a repeated option: %v", err)
	}
	if rest := q.Rest(); len(rest) != 1 || rest.Get("extra") != "1" {
		t.Errorf("Rest = %v, want only extra", rest)
	}
	err = q.Done()
	if !errors.Is(err, lock.ErrInvalidURL) || !strings.Contains(err.Error(), "unknown option extra") || !strings.Contains(err.Error(), "known: addr, dial, pool, prefix, timeout, tls") {
		t.Errorf("Done = %v", err)
	}

	for raw, read := range map[string]func(*driver.Query) error{
		"x://h/?timeout=-1s": func(q *driver.Query) error { _, err := q.Duration("timeout", 0); return err },
		"x://h/?timeout=1":   func(q *driver.Query) error { _, err := q.Duration("timeout", 0); return err },
		"x://h/?pool=0":      func(q *driver.Query) error { _, err := q.Int("pool", 1); return err },
		"x://h/?pool=x":      func(q *driver.Query) error { _, err := q.Int("pool", 1); return err },
		"x://h/?tls=maybe":   func(q *driver.Query) error { _, err := q.Bool("tls", false); return err },
	} {
		u, _ := url.Parse(raw)
		q, err := errs.Query(u)
		if err != nil {
			t.Fatal(err)
		}
		if err := read(q); !errors.Is(err, lock.ErrInvalidURL) || !strings.HasPrefix(err.Error(), "testlock: ") {
			t.Errorf("%s: %v, want an ErrInvalidURL from testlock", raw, err)
		}
	}
	if _, err := errs.Query(&url.URL{RawQuery: "a=%zz"}); !errors.Is(err, lock.ErrInvalidURL) {
		t.Errorf("Query of a bad query string: %v", err)
	}
}

func TestHosts(t *testing.T) {
	u, _ := url.Parse("x://a:1,b:65535/")
	if hosts, err := errs.Hosts(u); err != nil || strings.Join(hosts, " ") != "a:1 b:65535" {
		t.Errorf("Hosts = %v, %v", hosts, err)
	}
	for _, host := range []string{"", "a", "a:0", "a:1,:2", "a:70000", "a:1,", "a:x"} {
		if _, err := errs.Hosts(&url.URL{Scheme: "x", Host: host}); !errors.Is(err, lock.ErrInvalidURL) {
			t.Errorf("Hosts(%q): %v, want ErrInvalidURL", host, err)
		}
	}
}

func TestLeaseOf(t *testing.T) {
	if ls := driver.LeaseOf[*testLease](nil); ls != nil {
		t.Errorf("LeaseOf(nil) = %#v, want a nil interface", ls)
	}
	le := newLease(&driver.Gate{Name: errs})
	if ls := driver.LeaseOf(le); ls != le {
		t.Errorf("LeaseOf(le) = %v, want le", ls)
	}
}

func TestWakeup(t *testing.T) {
	w := driver.NewWakeup()
	if w.Take() {
		t.Fatal("a new Wakeup has one pending")
	}
	w.Notify()
	w.Notify() // two before one Wait: one wake-up
	if err := w.Wait(t.Context()); err != nil {
		t.Fatalf("Wait with a pending wake-up: %v", err)
	}
	if w.Take() {
		t.Error("two Notifies before one Wait left a second wake-up pending")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	w.Notify()
	if err := w.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait with an ended context: %v, want context.Canceled", err)
	}
	w.Notify()
	if !w.Take() || w.Take() {
		t.Error("Take did not remove exactly the one pending wake-up")
	}
	go w.Notify()
	if err := w.Wait(t.Context()); err != nil {
		t.Errorf("Wait woken by a later Notify: %v", err)
	}
}

func TestCompleting(t *testing.T) {
	g := &driver.Gate{Name: errs}
	le := newLease(g)
	if got, err := driver.Completing[*testLease](t.Context(), g, le, time.Minute); err != nil || got != le {
		t.Errorf("Completing of the Locker's lease = %v, %v", got, err)
	}
	if _, err := driver.Completing[*testLease](t.Context(), g, le, 0); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("Completing with a zero retention: %v, want ErrInvalidTTL", err)
	}
	if _, err := driver.Completing[*testLease](t.Context(), g, newLease(&driver.Gate{Name: errs}), time.Minute); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("Completing of another Locker's lease: %v, want ErrInvalidArgument", err)
	}
}
