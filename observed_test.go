package lock_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/observe"
)

// recorder is an Observer that keeps every event and lets a test wait for
// one.
type recorder struct {
	mu     sync.Mutex
	events []observe.Event
	added  chan struct{} // receives (without blocking) after each event
}

func newRecorder() *recorder { return &recorder{added: make(chan struct{}, 1)} }

func (r *recorder) Observe(_ context.Context, e observe.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	select {
	case r.added <- struct{}{}:
	default:
	}
}

// of returns the events of kind k so far.
func (r *recorder) of(k observe.Kind) []observe.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []observe.Event
	for _, e := range r.events {
		if e.Kind == k {
			out = append(out, e)
		}
	}
	return out
}

// await waits until n events match, and returns them.
func (r *recorder) await(t *testing.T, n int, match func(observe.Event) bool) []observe.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		var got []observe.Event
		for _, e := range r.events {
			if match(e) {
				got = append(got, e)
			}
		}
		r.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-r.added:
		case <-timeout:
			t.Fatalf("waited 10s for %d matching events, have %d", n, len(got))
		}
	}
}

// only returns the single event of kind k, failing otherwise.
func (r *recorder) only(t *testing.T, k observe.Kind) observe.Event {
	t.Helper()
	got := r.of(k)
	if len(got) != 1 {
		t.Fatalf("%d %v events, want 1: %+v", len(got), k, got)
	}
	return got[0]
}

func TestObserveConformanceMemlock(t *testing.T) {
	table := memlock.New()
	rec := newRecorder()
	conformance.Run(t, conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return lock.Observe(table, rec) },
		TTLGranularity: time.Millisecond,
	})
	if len(rec.of(observe.KindTryAcquire)) == 0 {
		t.Error("the suite ran on the observed Locker and no take was reported")
	}
}

func TestObserveStoreConformanceMemlock(t *testing.T) {
	table := memlock.New()
	conformance.RunStore(t, conformance.StoreConfig{
		NewStore:       func(t *testing.T) idempotency.Store { return lock.ObserveStore(table, newRecorder()) },
		TTLGranularity: time.Millisecond,
	})
}

// TestObserveConformancePolling runs the suite on an observed Locker that
// is no Notifier, so that Acquire must keep polling through the wrapper.
func TestObserveConformancePolling(t *testing.T) {
	table := memlock.New()
	conformance.Run(t, conformance.Config{
		NewLocker:      func(t *testing.T) lock.Locker { return lock.Observe(&wrapped{inner: table}, newRecorder()) },
		TTLGranularity: time.Millisecond,
	})
}

// TestObserveKeepsInterfaces checks that the wrapper has exactly the
// optional interfaces that decide behaviour that the wrapped Locker has.
func TestObserveKeepsInterfaces(t *testing.T) {
	ctx := t.Context()
	rec := newRecorder()

	full := lock.Observe(memlock.New(), rec)
	if _, ok := full.(lock.Notifier); !ok {
		t.Error("observed memlock is not a Notifier")
	}
	if _, ok := full.(lock.Store); !ok {
		t.Error("observed memlock is not a Store")
	}
	if _, ok := full.(idempotency.FingerprintClaimer); !ok {
		t.Error("observed memlock is not a FingerprintClaimer")
	}
	if _, ok := full.(lock.Admin); !ok {
		t.Error("observed memlock is not an Admin")
	}
	if err := lock.Ping(ctx, full); err != nil {
		t.Errorf("Ping of observed memlock: %v", err)
	}
	le, err := full.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := le.(lock.Deadliner); !ok {
		t.Error("lease of observed memlock is not a Deadliner")
	}
	if _, ok := le.(lock.LossNotifier); !ok {
		t.Error("lease of observed memlock is not a LossNotifier")
	}
	if lock.ObserverOf(le) == nil || lock.ObserverOf(full) == nil {
		t.Error("ObserverOf finds no observer on the observed Locker or its lease")
	}
	if lock.ObserverOf(memlock.New()) != nil {
		t.Error("ObserverOf finds an observer on a plain Locker")
	}
	info, err := full.(lock.Admin).Inspect(ctx, "k")
	if err != nil || !info.Held || info.Token != le.Token() {
		t.Errorf("Inspect through the wrapper: %+v, %v; want held with token %d", info, err, le.Token())
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// A Locker with none of the optional interfaces: the wrapper claims
	// none of those that change what a helper does.
	plain := lock.Observe(&wrapped{inner: memlock.New()}, rec)
	if _, ok := plain.(lock.Notifier); ok {
		t.Error("observed polling Locker claims to be a Notifier: Acquire would wait for events that never come")
	}
	if _, ok := plain.(lock.Store); ok {
		t.Error("observed plain Locker claims to be a Store")
	}
	if _, ok := plain.(idempotency.FingerprintClaimer); ok {
		t.Error("observed plain Locker claims to be a FingerprintClaimer")
	}
	if err := lock.Ping(ctx, plain); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Ping of an observed Locker without Ping: %v, want ErrUnsupported", err)
	}
	if _, err := plain.(lock.Admin).Inspect(ctx, "k"); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Inspect of an observed Locker without Admin: %v, want ErrUnsupported", err)
	}
	if err := lock.CheckTTL(plain, 24*time.Hour); err != nil {
		t.Errorf("CheckTTL of an observed Locker without limits: %v", err)
	}
	le, err = plain.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := le.(lock.LossNotifier); ok {
		t.Error("lease of an observed Locker whose leases have no Lost claims to be a LossNotifier")
	}
	if _, ok := le.(lock.Deadliner); !ok {
		t.Error("lease lost its Deadline through the wrapper")
	}
	_ = le.Release(ctx)
	if got := lock.Observe(memlock.New(), nil); got == nil || lock.ObserverOf(got) != nil {
		t.Error("Observe with a nil observer must return the Locker itself")
	}
}

func TestObserveTryAcquireAndRelease(t *testing.T) {
	ctx := t.Context()
	rec := newRecorder()
	l := lock.Observe(memlock.New(), rec)
	le, err := l.TryAcquire(ctx, "orders:42", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.TryAcquire(ctx, "orders:42", time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("second take: %v", err)
	}
	if _, err := l.TryAcquire(ctx, "", time.Minute); err == nil {
		t.Fatal("empty key taken")
	}
	takes := rec.of(observe.KindTryAcquire)
	if len(takes) != 3 || takes[0].Outcome != observe.Acquired || takes[1].Outcome != observe.Contended || takes[2].Outcome != observe.Failed {
		t.Fatalf("take events %+v, want acquired, contended, error", takes)
	}
	if takes[0].Token != le.Token() || takes[0].Backend != "memlock" || takes[0].Class != observe.DefaultClass || takes[0].Key != "" {
		t.Errorf("take event %+v: want token %d, backend memlock, class default, no key", takes[0], le.Token())
	}
	if takes[2].Err == nil {
		t.Error("failed take reported without its error")
	}
	if err := le.Refresh(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := le.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("second release: %v", err)
	}
	if err := le.Refresh(ctx, time.Minute); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("refresh after release: %v", err)
	}
	refreshes := rec.of(observe.KindRefresh)
	if len(refreshes) != 2 || refreshes[0].Outcome != observe.OK || refreshes[1].Outcome != observe.NotHeld || refreshes[0].Latency <= 0 {
		t.Errorf("refresh events %+v, want ok with a latency, then not_held", refreshes)
	}
	rels := rec.of(observe.KindRelease)
	if len(rels) != 2 || rels[0].Outcome != observe.OK || !rels[0].Ends || rels[0].Hold <= 0 || rels[1].Outcome != observe.NotHeld || rels[1].Ends {
		t.Errorf("release events %+v, want ok ending the lease with a hold time, then not_held not ending it", rels)
	}
}

func TestObserveKeyClass(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name      string
		opts      []observe.Option
		key       string
		class     string
		raw       string
		backend   string
		wantEmpty bool
	}{
		{"default", nil, "user@example.com:cart", observe.DefaultClass, "", "memlock", false},
		{"prefix", []observe.Option{observe.WithKeyClass(observe.PrefixClass(":"))}, "checkout:order-42", "checkout", "", "memlock", false},
		{"prefix refuses an identifier", []observe.Option{observe.WithKeyClass(observe.PrefixClass(":"))}, "user@example.com:cart", observe.DefaultClass, "", "memlock", false},
		{"raw", []observe.Option{observe.WithRawKeys(), observe.WithBackend("mem")}, "checkout:order-42", observe.DefaultClass, "checkout:order-42", "mem", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder()
			l := lock.Observe(memlock.New(), rec, tc.opts...)
			le, err := l.TryAcquire(ctx, tc.key, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			_ = le.Release(ctx)
			for _, e := range rec.events {
				if e.Class != tc.class || e.Key != tc.raw || e.Backend != tc.backend {
					t.Errorf("%v event class %q key %q backend %q, want %q %q %q", e.Kind, e.Class, e.Key, e.Backend, tc.class, tc.raw, tc.backend)
				}
			}
		})
	}
}

// TestObserveAcquireWakeups: an Acquire that waits on a notifying backend
// reports its wait, its attempts and the notification that woke it.
func TestObserveAcquireWakeups(t *testing.T) {
	ctx := t.Context()
	rec := newRecorder()
	l := lock.Observe(memlock.New(), rec)
	holder, err := l.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		le, err := lock.Acquire(ctx, l, "k", time.Minute)
		if err == nil {
			err = le.Release(ctx)
		}
		got <- err
	}()
	// Acquire's second attempt comes after it subscribed: a release from
	// then on wakes it.
	rec.await(t, 2, func(e observe.Event) bool { return e.Kind == observe.KindTryAcquire && e.Outcome == observe.Contended })
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	e := rec.only(t, observe.KindAcquire)
	if e.Outcome != observe.Acquired || e.Attempts < 3 || e.Wakeups < 1 || e.Wait <= 0 || e.Token == 0 {
		t.Errorf("acquire event %+v: want acquired after at least 3 attempts and a wake-up, with a wait and a token", e)
	}
}

// TestObserveAcquirePolling: on a backend that cannot notify, the wait is
// reported with its attempts and no wake-ups; an Acquire whose context
// ends is reported as canceled.
func TestObserveAcquirePolling(t *testing.T) {
	ctx := t.Context()
	rec := newRecorder()
	inner := &wrapped{inner: memlock.New()}
	holder, err := inner.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// The context ends at the third attempt, not at a deadline that a
	// loaded machine could reach before Acquire polled twice. Acquire calls
	// TryAcquire on its own goroutine, so the times need no lock.
	short, cancel := context.WithCancel(ctx)
	defer cancel()
	var attempts int
	var first, cancelled time.Time
	l := lock.Observe(lockerFunc(func(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
		switch attempts++; attempts {
		case 1:
			first = time.Now()
		case 3:
			cancelled = time.Now()
			cancel()
		}
		return inner.TryAcquire(ctx, key, ttl)
	}), rec)
	if _, err := lock.Acquire(short, l, "k", time.Minute, lock.WithBackoff(time.Millisecond, 5*time.Millisecond)); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("Acquire of a held key: %v", err)
	}
	e := rec.only(t, observe.KindAcquire)
	if e.Outcome != observe.Canceled || e.Attempts != attempts || e.Attempts < 3 || e.Wakeups != 0 || e.Wait < cancelled.Sub(first) || e.Err == nil {
		t.Errorf("acquire event %+v: want canceled after the %d attempts made, no wake-ups, a wait of at least the %v from the first attempt to the cancel, and the error", e, attempts, cancelled.Sub(first))
	}
	_ = holder.Release(ctx)
	if _, err := lock.Acquire(ctx, l, "", time.Minute); err == nil {
		t.Fatal("empty key acquired")
	}
	if got := rec.of(observe.KindAcquire); len(got) != 2 || got[1].Outcome != observe.Failed {
		t.Errorf("acquire events %+v: want the bad key's reported as error", got)
	}
}

// TestObserveLoss: a lease lost under KeepAlive is reported once, with its
// cause, and ends the lease.
func TestObserveLoss(t *testing.T) {
	ctx := t.Context()
	rec := newRecorder()
	table := memlock.New()
	l := lock.Observe(table, rec)
	le, err := l.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	k, err := lock.KeepAlive(ctx, le, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := table.ForceRelease(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	<-k.Context().Done()
	k.Stop()
	e := rec.only(t, observe.KindLost)
	if !errors.Is(e.Err, lock.ErrLeaseLost) || !e.Ends || e.Outcome != observe.NotHeld || e.Token != le.Token() {
		t.Errorf("lost event %+v: want the ErrLeaseLost cause, ending the lease, with its token", e)
	}
	if err := le.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("release after loss: %v", err)
	}
	if r := rec.only(t, observe.KindRelease); r.Ends {
		t.Errorf("release after a reported loss ends the lease again: %+v", r)
	}

	// A Keeper that is stopped reports no loss.
	rec2 := newRecorder()
	le, err = lock.Observe(table, rec2).TryAcquire(ctx, "k2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	k, err = lock.KeepAlive(ctx, le, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rec2.of(observe.KindLost); len(got) != 0 {
		t.Errorf("a stopped Keeper reported a loss: %+v", got)
	}
}

// TestObserveRefreshFailure: KeepAlive's transient refresh failures are
// reported with their error, and the loss by deadline after them.
func TestObserveRefreshFailure(t *testing.T) {
	ctx := t.Context()
	rec := newRecorder()
	failing := &wrapped{inner: memlock.New(), refresh: func(context.Context, lock.Lease, time.Duration) error { return errBroken }}
	l := lock.Observe(failing, rec)
	le, err := l.TryAcquire(ctx, "k", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	k, err := lock.KeepAlive(ctx, le, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	<-k.Context().Done()
	k.Stop()
	fails := rec.of(observe.KindRefresh)
	if len(fails) == 0 || fails[0].Outcome != observe.Failed || !errors.Is(fails[0].Err, errBroken) {
		t.Errorf("refresh events %+v: want failures carrying the error", fails)
	}
	if e := rec.only(t, observe.KindLost); !errors.Is(e.Err, errBroken) {
		t.Errorf("lost event %+v: want the last refresh error in its cause", e)
	}
}

func TestObserveDo(t *testing.T) {
	ctx := t.Context()
	rec := newRecorder()
	l := lock.Observe(memlock.New(), rec)
	err := lock.Do(ctx, l, "k", func(ctx context.Context, le lock.Lease) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if e := rec.only(t, observe.KindAcquire); e.Outcome != observe.Acquired || e.Attempts != 1 {
		t.Errorf("acquire event of Do %+v", e)
	}
	if e := rec.only(t, observe.KindRelease); e.Outcome != observe.OK || !e.Ends {
		t.Errorf("release event of Do %+v", e)
	}
}

func TestObserveClaimComplete(t *testing.T) {
	ctx := t.Context()
	rec := newRecorder()
	s := lock.ObserveStore(memlock.New(), rec)
	le, rec0, err := s.Claim(ctx, "k", time.Minute)
	if err != nil || rec0 != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, le, []byte("done"), time.Minute); err != nil {
		t.Fatalf("Complete of an observed lease: %v", err)
	}
	_, got, err := s.Claim(ctx, "k", time.Minute)
	if err != nil || string(got) != "done" {
		t.Fatalf("Claim after Complete: %q, %v", got, err)
	}
	fp := s.(idempotency.FingerprintClaimer)
	le2, _, _, err := fp.ClaimFingerprint(ctx, "k2", time.Minute, []byte("fp"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, holder, err := fp.ClaimFingerprint(ctx, "k2", time.Minute, []byte("other")); !errors.Is(err, lock.ErrNotAcquired) || string(holder) != "fp" {
		t.Fatalf("second ClaimFingerprint: holder %q, %v", holder, err)
	}
	_ = le2.Release(ctx)
	takes := rec.of(observe.KindTryAcquire)
	want := []observe.Outcome{observe.Acquired, observe.Completed, observe.Acquired, observe.Contended}
	if len(takes) != len(want) {
		t.Fatalf("take events %+v, want %v", takes, want)
	}
	for i, w := range want {
		if takes[i].Outcome != w {
			t.Errorf("take %d: %v, want %v", i, takes[i].Outcome, w)
		}
	}
	if rels := rec.of(observe.KindRelease); len(rels) != 2 || rels[0].Outcome != observe.OK || !rels[0].Ends {
		t.Errorf("release events %+v: want Complete reported as a release ending the lease", rels)
	}
}

// TestObserveSlog checks the slog adapter's levels and attributes.
func TestObserveSlog(t *testing.T) {
	ctx := t.Context()
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	table := memlock.New()
	l := lock.Observe(table, observe.Slog(logger), observe.WithKeyClass(observe.PrefixClass(":")))
	le, err := lock.Acquire(ctx, l, "checkout:secret-42", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	k, err := lock.KeepAlive(ctx, le, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_ = table.ForceRelease(ctx, "checkout:secret-42")
	<-k.Context().Done()
	k.Stop()
	if strings.Contains(buf.String(), "secret-42") {
		t.Errorf("the log shows the raw key:\n%s", buf.String())
	}
	levels := map[string]string{}
	for line := range strings.Lines(buf.String()) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		levels[m["kind"].(string)] = m["level"].(string)
		if m["class"] != "checkout" || m["backend"] != "memlock" {
			t.Errorf("log line without class checkout and backend memlock: %s", line)
		}
		if m["kind"] == "acquire" && (m["wait"] == nil || m["attempts"] == nil) {
			t.Errorf("acquire line without wait and attempts: %s", line)
		}
		if m["kind"] == "lost" && !strings.Contains(m["error"].(string), "lease lost") {
			t.Errorf("lost line without its cause: %s", line)
		}
	}
	if levels["acquire"] != "DEBUG" || levels["try_acquire"] != "DEBUG" || levels["lost"] != "WARN" {
		t.Errorf("levels %v: want acquire and try_acquire at DEBUG, lost at WARN", levels)
	}
	for _, tc := range []struct {
		e    observe.Event
		want slog.Level
	}{
		{observe.Event{Kind: observe.KindIdempotency, Outcome: observe.StoreError}, slog.LevelError},
		{observe.Event{Kind: observe.KindIdempotency, Outcome: observe.Tombstone}, slog.LevelWarn},
		{observe.Event{Kind: observe.KindIdempotency, Outcome: observe.Replay}, slog.LevelDebug},
		{observe.Event{Kind: observe.KindIdempotency, Outcome: observe.FingerprintMismatch}, slog.LevelInfo},
		{observe.Event{Kind: observe.KindRefresh, Outcome: observe.Failed}, slog.LevelWarn},
		{observe.Event{Kind: observe.KindRefresh, Outcome: observe.OK}, slog.LevelDebug},
	} {
		if got := observe.Level(tc.e); got != tc.want {
			t.Errorf("Level(%v %v) = %v, want %v", tc.e.Kind, tc.e.Outcome, got, tc.want)
		}
	}
}

// TestObserveOffAllocatesNothing: the helpers allocate nothing more for a
// Locker that is not observed than its own take and release do.
func TestObserveOffAllocatesNothing(t *testing.T) {
	ctx := context.Background()
	l := memlock.New()
	direct := testing.AllocsPerRun(200, func() {
		le, _ := l.TryAcquire(ctx, "k", time.Minute)
		_ = le.Release(ctx)
	})
	helper := testing.AllocsPerRun(200, func() {
		le, _ := lock.Acquire(ctx, l, "k", time.Minute)
		_ = le.Release(ctx)
	})
	options := testing.AllocsPerRun(200, lock.BuildOptions)
	if helper != direct+options {
		t.Errorf("Acquire+Release allocates %v per run, TryAcquire+Release %v and its options %v: the observation hook allocates when off", helper, direct, options)
	}
}
