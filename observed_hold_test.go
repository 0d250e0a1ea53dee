package lock_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/observe"
)

// holdKey is the context key under which a scoper's StartHold leaves the
// token of the lease it started on.
type holdKey struct{ name string }

// scoper is an observe.HoldScoper that records what it is handed:
// Observe's events (its recorder), StartHold's and end's, and, in trail
// when set, the order of the calls that start and end holdings.
type scoper struct {
	*recorder
	name    string
	decline bool // StartHold returns a nil end
	trail   *trail

	mu     sync.Mutex
	starts []observe.Event
	ends   []observe.Event
	// startCtx is the context of the latest StartHold, endCtx of the
	// latest end.
	startCtx, endCtx context.Context
}

func newScoper(name string, tr *trail) *scoper {
	return &scoper{recorder: newRecorder(), name: name, trail: tr}
}

func (s *scoper) StartHold(ctx context.Context, e observe.Event) (context.Context, func(context.Context, observe.Event)) {
	s.mu.Lock()
	s.starts = append(s.starts, e)
	s.startCtx = ctx
	s.mu.Unlock()
	s.trail.add(s.name + ".start")
	if s.decline {
		return context.WithValue(ctx, holdKey{"declined"}, true), nil
	}
	return context.WithValue(ctx, holdKey{s.name}, e.Token), func(ctx context.Context, e observe.Event) {
		s.mu.Lock()
		s.ends = append(s.ends, e)
		s.endCtx = ctx
		s.mu.Unlock()
		s.trail.add(s.name + ".end " + e.Kind.String())
	}
}

func (s *scoper) Observe(ctx context.Context, e observe.Event) {
	if e.Ends {
		s.trail.add(s.name + ".observe " + e.Kind.String())
	}
	s.recorder.Observe(ctx, e)
}

// calls returns copies of the StartHold and end events so far.
func (s *scoper) calls() (starts, ends []observe.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]observe.Event(nil), s.starts...), append([]observe.Event(nil), s.ends...)
}

// endings returns the events with Ends that Observe was handed.
func (s *scoper) endings() []observe.Event {
	var out []observe.Event
	for _, k := range []observe.Kind{observe.KindRelease, observe.KindLost} {
		for _, e := range s.of(k) {
			if e.Ends {
				out = append(out, e)
			}
		}
	}
	return out
}

// trail is the order of calls across observers; a nil trail drops them.
type trail struct {
	mu    sync.Mutex
	calls []string
}

func (t *trail) add(c string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.calls = append(t.calls, c)
	t.mu.Unlock()
}

func (t *trail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return fmt.Sprint(t.calls)
}

// TestDoHoldScoper: Do starts the holding once the lease is taken, runs fn
// with the context StartHold returned, and hands the release that ends the
// holding to end rather than to Observe; the lease's other events still go
// to Observe.
func TestDoHoldScoper(t *testing.T) {
	ctx := t.Context()
	s := newScoper("s", nil)
	l := lock.Observe(memlock.New(), s, observe.WithKeyClass(observe.PrefixClass(":")))
	var token uint64
	var fnCtx context.Context
	err := lock.Do(ctx, l, "orders:1", func(ctx context.Context, le lock.Lease) error {
		token, fnCtx = le.Token(), ctx
		if starts, ends := s.calls(); len(starts) != 1 || len(ends) != 0 {
			t.Errorf("inside fn: %d StartHold and %d end calls, want 1 and 0", len(starts), len(ends))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	starts, ends := s.calls()
	if len(starts) != 1 || len(ends) != 1 {
		t.Fatalf("%d StartHold and %d end calls, want one each", len(starts), len(ends))
	}
	st := starts[0]
	if st.Kind != observe.KindTryAcquire || st.Outcome != observe.Acquired || st.Token != token || st.Backend != "memlock" || st.Class != "orders" || st.Ends {
		t.Errorf("StartHold event %+v: want the take's (try_acquire, acquired, token %d, memlock, class orders)", st, token)
	}
	if take := s.only(t, observe.KindTryAcquire); st.Hold < 0 || st.Hold > time.Second || take.Token != st.Token {
		t.Errorf("StartHold event's Hold %v (take %+v): want the short time since the take", st.Hold, take)
	}
	if fnCtx.Value(holdKey{"s"}) != token {
		t.Error("fn's context does not derive from the one StartHold returned")
	}
	if s.startCtx.Value(holdKey{"s"}) != nil {
		t.Error("StartHold was handed a context that already carries a holding")
	}
	end := ends[0]
	if end.Kind != observe.KindRelease || end.Outcome != observe.OK || !end.Ends || end.Token != token || end.Class != "orders" || end.Backend != "memlock" || end.Hold < st.Hold {
		t.Errorf("end event %+v: want the release that ends the lease, filled in as Observe's are", end)
	}
	if got := s.endings(); len(got) != 0 {
		t.Errorf("Observe was handed the ending event too: %+v", got)
	}
	if got := s.of(observe.KindRelease); len(got) != 0 {
		t.Errorf("Observe was handed releases: %+v", got)
	}
	if e := s.only(t, observe.KindAcquire); e.Outcome != observe.Acquired {
		t.Errorf("acquire event of Do %+v", e)
	}
}

// TestDoHoldScoperNested: inside fn, a nested Do starts a holding of its
// own under fn's context, and a plain lease taken and released by fn is
// reported to Observe as before; each end goes to its own holding.
func TestDoHoldScoperNested(t *testing.T) {
	ctx := t.Context()
	s := newScoper("s", nil)
	l := lock.Observe(memlock.New(), s)
	var outer, inner, plain uint64
	err := lock.Do(ctx, l, "outer", func(ctx context.Context, le lock.Lease) error {
		outer = le.Token()
		p, err := l.TryAcquire(ctx, "plain", time.Minute)
		if err != nil {
			return err
		}
		plain = p.Token()
		if err := p.Release(ctx); err != nil {
			return err
		}
		return lock.Do(ctx, l, "inner", func(ctx context.Context, le lock.Lease) error {
			inner = le.Token()
			if ctx.Value(holdKey{"s"}) != inner {
				t.Error("nested fn's context does not carry the nested holding")
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	starts, ends := s.calls()
	if len(starts) != 2 || len(ends) != 2 {
		t.Fatalf("%d StartHold and %d end calls, want 2 each (outer, nested)", len(starts), len(ends))
	}
	if starts[0].Token != outer || starts[1].Token != inner || ends[0].Token != inner || ends[1].Token != outer {
		t.Errorf("start tokens %d, %d and end tokens %d, %d; want outer %d then inner %d started, inner then outer ended",
			starts[0].Token, starts[1].Token, ends[0].Token, ends[1].Token, outer, inner)
	}
	if s.startCtx.Value(holdKey{"s"}) != outer {
		t.Error("the nested StartHold was not handed the outer fn's context")
	}
	got := s.endings()
	if len(got) != 1 || got[0].Token != plain || got[0].Kind != observe.KindRelease {
		t.Errorf("Observe's ending events %+v: want only the plain lease's release (token %d)", got, plain)
	}
}

// TestDoHoldScoperLoss: a loss the Keeper reports ends the holding, once,
// and cancels fn's context, which still derives from StartHold's; Do then
// releases nothing (the backend reported the loss).
func TestDoHoldScoperLoss(t *testing.T) {
	ctx := t.Context()
	s := newScoper("s", nil)
	table := memlock.New()
	l := lock.Observe(table, s)
	err := lock.Do(ctx, l, "k", func(ctx context.Context, le lock.Lease) error {
		if err := table.ForceRelease(ctx, "k"); err != nil {
			return err
		}
		<-ctx.Done()
		if ctx.Value(holdKey{"s"}) != le.Token() {
			t.Error("fn's context does not derive from the one StartHold returned")
		}
		return nil
	}, lock.WithRefreshInterval(10*time.Millisecond))
	if !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("Do: %v, want the loss", err)
	}
	_, ends := s.calls()
	if len(ends) != 1 || ends[0].Kind != observe.KindLost || !ends[0].Ends || !errors.Is(ends[0].Err, lock.ErrLeaseLost) {
		t.Fatalf("end events %+v: want one, the loss", ends)
	}
	if got := s.endings(); len(got) != 0 {
		t.Errorf("Observe was handed an ending event too: %+v", got)
	}
	if got := s.of(observe.KindLost); len(got) != 0 {
		t.Errorf("Observe was handed the loss too: %+v", got)
	}
}

// TestDoHoldScoperLossByDeadline: a lease lost by its local deadline
// (renewals fail) ends the holding at the loss; Do's release after it is
// reported to Observe, not ending anything again.
func TestDoHoldScoperLossByDeadline(t *testing.T) {
	ctx := t.Context()
	s := newScoper("s", nil)
	failing := &wrapped{inner: memlock.New(), refresh: func(context.Context, lock.Lease, time.Duration) error { return errBroken }}
	l := lock.Observe(failing, s)
	err := lock.Do(ctx, l, "k", func(ctx context.Context, le lock.Lease) error {
		<-ctx.Done()
		return nil
	}, lock.WithTTL(300*time.Millisecond))
	if !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("Do: %v, want the loss", err)
	}
	_, ends := s.calls()
	if len(ends) != 1 || ends[0].Kind != observe.KindLost || !errors.Is(ends[0].Err, errBroken) {
		t.Fatalf("end events %+v: want one, the loss by deadline", ends)
	}
	// (The release may find the key expired on memlock too: its outcome
	// is OK or NotHeld.)
	if r := s.only(t, observe.KindRelease); r.Ends {
		t.Errorf("Do's release after the loss %+v: want it reported to Observe, not ending the lease", r)
	}
}

// TestDoHoldScoperPanic: fn's panic still ends the holding, once, with
// Do's release; so does a release that fails.
func TestDoHoldScoperPanic(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name    string
		release func(context.Context, lock.Lease) error
		want    observe.Outcome
	}{
		{"released", nil, observe.OK},
		{"release-fails", func(context.Context, lock.Lease) error { return errBroken }, observe.Failed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newScoper("s", nil)
			l := lock.Observe(&wrapped{inner: memlock.New(), release: tc.release}, s)
			func() {
				defer func() {
					if r := recover(); r != "boom" {
						t.Errorf("recovered %v, want fn's panic", r)
					}
				}()
				_ = lock.Do(ctx, l, "k", func(context.Context, lock.Lease) error { panic("boom") })
			}()
			starts, ends := s.calls()
			if len(starts) != 1 || len(ends) != 1 || ends[0].Kind != observe.KindRelease || ends[0].Outcome != tc.want || !ends[0].Ends {
				t.Fatalf("%d StartHold calls, end events %+v: want one release with outcome %v", len(starts), ends, tc.want)
			}
			if got := s.endings(); len(got) != 0 {
				t.Errorf("Observe was handed an ending event too: %+v", got)
			}
		})
	}
}

// TestDoHoldScoperDeclines: a scoper whose StartHold returns a nil end is
// handed the ending event through Observe, and its context is not used.
func TestDoHoldScoperDeclines(t *testing.T) {
	ctx := t.Context()
	s := newScoper("s", nil)
	s.decline = true
	l := lock.Observe(memlock.New(), s)
	err := lock.Do(ctx, l, "k", func(ctx context.Context, le lock.Lease) error {
		if ctx.Value(holdKey{"declined"}) != nil {
			t.Error("fn runs with the context of a StartHold that declined")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if starts, ends := s.calls(); len(starts) != 1 || len(ends) != 0 {
		t.Errorf("%d StartHold and %d end calls, want 1 and 0", len(starts), len(ends))
	}
	if got := s.endings(); len(got) != 1 || got[0].Kind != observe.KindRelease {
		t.Errorf("Observe's ending events %+v: want the release", got)
	}
}

// TestStartHoldOnce: StartHold starts nothing on a lease it started on
// before or that has ended, nor on a lease that is not observed.
func TestStartHoldOnce(t *testing.T) {
	ctx := t.Context()
	s := newScoper("s", nil)
	l := lock.Observe(memlock.New(), s)
	le, err := l.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	hctx := lock.StartHold(ctx, le)
	if hctx.Value(holdKey{"s"}) != le.Token() {
		t.Fatal("StartHold did not return the scoper's context")
	}
	if again := lock.StartHold(ctx, le); again != ctx {
		t.Error("a second StartHold on one lease returned another context")
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := le.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("second release: %v", err)
	}
	ended, err := l.TryAcquire(ctx, "k2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := ended.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := lock.StartHold(ctx, ended); got != ctx {
		t.Error("StartHold on a released lease returned another context")
	}
	starts, ends := s.calls()
	if len(starts) != 1 || len(ends) != 1 || ends[0].Token != le.Token() {
		t.Errorf("%d StartHold calls, end events %+v: want one each, for the first lease", len(starts), ends)
	}
	if got := s.endings(); len(got) != 1 || got[0].Token != ended.Token() {
		t.Errorf("Observe's ending events %+v: want the lease never started on's release", got)
	}
	if rels := s.of(observe.KindRelease); len(rels) != 2 || rels[0].Ends || rels[0].Outcome != observe.NotHeld {
		t.Errorf("Observe's releases %+v: want the first lease's second release (not ending) and the second lease's", rels)
	}
	plain, err := memlock.New().TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if lock.StartHold(ctx, plain) != ctx {
		t.Error("StartHold on a lease that is not observed returned another context")
	}
}

// TestStartHoldOffAllocatesNothing: StartHold costs no allocation on a
// lease that is not observed, nor on one whose observer is not a
// HoldScoper.
func TestStartHoldOffAllocatesNothing(t *testing.T) {
	ctx := context.Background()
	plain, err := memlock.New().TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	observed, err := lock.Observe(memlock.New(), newRecorder()).TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for name, le := range map[string]lock.Lease{"unobserved": plain, "not a scoper": observed} {
		if n := testing.AllocsPerRun(100, func() { _ = lock.StartHold(ctx, le) }); n != 0 {
			t.Errorf("StartHold on a lease %s allocates %v per call, want 0", name, n)
		}
	}
}

// TestMultiHoldScoper: Multi is a HoldScoper when one of its observers is;
// its StartHold chains theirs, and its end hands the ending event to each
// observer in turn: to the end of those that started a holding, to
// Observe for the others.
func TestMultiHoldScoper(t *testing.T) {
	ctx := t.Context()
	if _, ok := observe.Multi(newRecorder(), observe.Slog(nil)).(observe.HoldScoper); ok {
		t.Error("Multi of observers none of which is a HoldScoper is one")
	}
	tr := &trail{}
	a, plain, declines, b := newScoper("a", tr), newScoper("plain", tr), newScoper("declines", tr), newScoper("b", tr)
	declines.decline = true
	m := observe.Multi(a, observe.Func(plain.Observe), nil, declines, b)
	if _, ok := m.(observe.HoldScoper); !ok {
		t.Fatal("Multi with HoldScopers among its observers is not one")
	}
	l := lock.Observe(memlock.New(), m)
	err := lock.Do(ctx, l, "k", func(ctx context.Context, le lock.Lease) error {
		if ctx.Value(holdKey{"a"}) != le.Token() || ctx.Value(holdKey{"b"}) != le.Token() {
			t.Error("fn's context does not carry both scopers' holdings")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "[a.start declines.start b.start a.end release plain.observe release declines.observe release b.end release]"
	if got := tr.String(); got != want {
		t.Errorf("calls %s, want %s", got, want)
	}
	if b.startCtx.Value(holdKey{"a"}) == nil {
		t.Error("the second scoper's StartHold was not handed the first one's context")
	}
	if s, _ := a.calls(); len(s) != 1 || s[0].Backend != "memlock" {
		t.Errorf("StartHold events %+v: want one, filled in", s)
	}
	for _, o := range []*scoper{a, b} {
		if _, ends := o.calls(); len(ends) != 1 || !ends[0].Ends || ends[0].Backend != "memlock" {
			t.Errorf("%s's end events %+v: want one release, filled in", o.name, ends)
		}
	}
	if a.endCtx == nil || b.endCtx == nil {
		t.Error("an end was handed no context")
	}
	// All declining: Multi declines, and the end goes to Observe.
	tr2 := &trail{}
	d, p := newScoper("d", tr2), newScoper("p", tr2)
	d.decline, p.decline = true, true
	l = lock.Observe(memlock.New(), observe.Multi(d, p))
	if err := lock.Do(ctx, l, "k", func(context.Context, lock.Lease) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if got, want := tr2.String(), "[d.start p.start d.observe release p.observe release]"; got != want {
		t.Errorf("calls %s, want %s", got, want)
	}
}

// gatedScoper is a scoper whose first StartHold call signals entered and
// then waits, inside the observer, until unblock is closed.
type gatedScoper struct {
	*scoper
	once             sync.Once
	entered, unblock chan struct{}
}

func (g *gatedScoper) StartHold(ctx context.Context, e observe.Event) (context.Context, func(context.Context, observe.Event)) {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.entered)
		<-g.unblock
	}
	return g.scoper.StartHold(ctx, e)
}

// TestStartHoldConcurrentStartsOne: of two StartHold calls on one lease
// at once, only one starts a holding; the other returns its context
// unchanged instead of starting a second one that nothing would end.
// Regression test: the check that StartHold had not run before read the
// end the first call stores only after the observer returned, so a second
// call made meanwhile started a second holding (an OpenTelemetry span
// never ended).
func TestStartHoldConcurrentStartsOne(t *testing.T) {
	ctx := t.Context()
	g := &gatedScoper{scoper: newScoper("s", nil), entered: make(chan struct{}), unblock: make(chan struct{})}
	l := lock.Observe(memlock.New(), g)
	le, err := l.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan context.Context, 1)
	go func() { first <- lock.StartHold(ctx, le) }()
	<-g.entered // the first call is inside the observer
	second := lock.StartHold(ctx, le)
	close(g.unblock)
	hctx := <-first
	if second != ctx {
		t.Error("a StartHold made while another was starting the holding returned another context")
	}
	if hctx.Value(holdKey{"s"}) != le.Token() {
		t.Error("the first StartHold did not return the scoper's context")
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if starts, ends := g.calls(); len(starts) != 1 || len(ends) != 1 {
		t.Errorf("%d holdings started, %d ended: want one each", len(starts), len(ends))
	}
}

// TestStartHoldRacingReleaseEndsTheHolding: a Release that ends the lease
// while StartHold is inside the observer (starting the holding) ends that
// holding, once the observer has returned, instead of reporting its event
// past it. Regression test: the end StartHold stores was read by the
// release before StartHold had stored it, so the release went to the
// observer as a plain event and the holding StartHold then stored was
// never ended (an OpenTelemetry span left open).
func TestStartHoldRacingReleaseEndsTheHolding(t *testing.T) {
	ctx := t.Context()
	g := &gatedScoper{scoper: newScoper("s", nil), entered: make(chan struct{}), unblock: make(chan struct{})}
	m := memlock.New()
	l := lock.Observe(m, g)
	le, err := l.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan context.Context, 1)
	go func() { started <- lock.StartHold(ctx, le) }()
	<-g.entered // StartHold is inside the observer
	released := make(chan error, 1)
	go func() { released <- le.Release(ctx) }()
	// The key is free once the release reached memlock: the release is
	// past its own work, on its way to reporting the end.
	next, err := lock.Acquire(ctx, m, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Release(ctx); err != nil {
		t.Fatal(err)
	}
	close(g.unblock)
	<-started
	if err := <-released; err != nil {
		t.Fatal(err)
	}
	if starts, ends := g.calls(); len(starts) != 1 || len(ends) != 1 {
		t.Errorf("%d holdings started, %d ended: want one each", len(starts), len(ends))
	}
}
