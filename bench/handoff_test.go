package bench

import (
	"context"
	"flag"
	"sync/atomic"
	"testing"
	"time"
)

// A Scaling run whose warm-up never ends (one client never gets the key,
// as with a library that starves a process) ends by handoff's timeout with
// no measured hand-off: it must fail, not report a hand-off latency of 0
// and warmup-handoffs -1 as a result. Regression test: on main (d81af2c)
// testing.Benchmark returned N=3 with ns/handoff-p50 0.
func TestHandoffFailsWhenWarmUpNeverEnds(t *testing.T) {
	benchtime(t, "3x")

	mem := memoryBackend()
	idem := mem.Libs[0]
	starves := Lib{Name: "starves-one-client", Setup: func(tb testing.TB, env Env) func() Client {
		next := idem.Setup(tb, env)
		var made int
		return func() Client {
			made++
			c := next()
			if made == ScalingClients {
				return &takesOnce{Client: c} // the last client never gets the key in the run
			}
			return c
		}
	}}
	// The same run with every client served is reported, after at least
	// one unmeasured hand-off per client and MinWarmUp in all.
	r := testing.Benchmark(func(b *testing.B) {
		Scaling(b, mem, idem, Env{HandoffTimeout: 2 * time.Second}, "served/", ScalingClients)
	})
	if r.N != 3 || r.Extra["warmup-handoffs"] < MinWarmUp {
		t.Fatalf("a run with every client served: N=%d, %v; want N=3 and at least %d warm-up hand-offs", r.N, r.Extra, MinWarmUp)
	}
	r = testing.Benchmark(func(b *testing.B) {
		Scaling(b, mem, starves, Env{HandoffTimeout: 2 * time.Second}, "starved/", ScalingClients)
	})
	if r.N != 0 {
		t.Fatalf("a run that never finished its warm-up was reported: N=%d, %v", r.N, r.Extra)
	}
}

// takesOnce is a Client whose Lock of the hand-off key succeeds once (the
// set-up's take) and then waits until its context ends.
type takesOnce struct {
	Client
	took atomic.Bool
}

func (c *takesOnce) Lock(ctx context.Context, key string) (Held, error) {
	if key != "starved/k" || c.took.CompareAndSwap(false, true) {
		return c.Client.Lock(ctx, key)
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// A Scaling window spans at least WindowPeriods of the backend's
// Background period, however few hand-offs go test asks for, and reports
// how many it measured; without a Background period it measures exactly
// b.N. The memory backend hands off in about HoldTime, so 3 hand-offs
// take a few milliseconds, far less than the window.
func TestScalingWindowSpansBackground(t *testing.T) {
	benchtime(t, "3x")

	mem := memoryBackend()
	idem := mem.Libs[0]
	r := testing.Benchmark(func(b *testing.B) {
		Scaling(b, mem, idem, Env{}, "no-background/", ScalingClients)
	})
	if r.N != 3 || r.Extra["handoffs"] != 3 {
		t.Fatalf("without a background period: N=%d, %v; want N=3 and 3 hand-offs", r.N, r.Extra)
	}

	mem.Background = 100 * time.Millisecond
	window := WindowPeriods * mem.Background
	r = testing.Benchmark(func(b *testing.B) {
		Scaling(b, mem, idem, Env{}, "background/", ScalingClients)
	})
	// Each hand-off takes at least HoldTime: a window of at least
	// window has at most window/HoldTime of them, and more than 3.
	if n := r.Extra["handoffs"]; r.N != 3 || n <= 3 || n > float64(window/HoldTime)+1 {
		t.Fatalf("with a background period of %v: N=%d, %v; want N=3 and between 4 and %d hand-offs", mem.Background, r.N, r.Extra, window/HoldTime+1)
	}
	if r.T < window {
		t.Fatalf("with a background period of %v the run took %v, less than its window of %v", mem.Background, r.T, window)
	}
}

// benchtime sets -test.benchtime for the benchmarks t runs with
// testing.Benchmark, until t ends.
func benchtime(t *testing.T, v string) {
	old := flag.Lookup("test.benchtime").Value.String()
	if err := flag.Set("test.benchtime", v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = flag.Set("test.benchtime", old) })
}

// The hand-off workload measures the refused attempt with the clients it
// runs, and makes no client of its own: an extra client's background
// requests (consullock renews its idle sessions 6 times a second for
// 10 s, etcdlock with WithQueue keeps its queue lease alive) would be
// counted in the measured window's requests per hand-off, of idemlock
// alone. Regression test: handoff made a ninth client to hold the key
// while the first one's attempts were timed.
func TestHandoffMakesOnlyItsClients(t *testing.T) {
	benchtime(t, "3x")

	mem := memoryBackend()
	idem := mem.Libs[0]
	var made, setups atomic.Int64
	counting := Lib{Name: "counting", Setup: func(tb testing.TB, env Env) func() Client {
		setups.Add(1)
		next := idem.Setup(tb, env)
		return func() Client {
			made.Add(1)
			return next()
		}
	}}
	r := testing.Benchmark(func(b *testing.B) {
		Handoff(b, mem, counting, Env{}, "clients/")
	})
	if r.N != 3 {
		t.Fatalf("Handoff: N=%d, %v; want N=3", r.N, r.Extra)
	}
	if got, want := made.Load(), Contenders*setups.Load(); got != want {
		t.Errorf("%d runs of Handoff made %d clients, want %d (%d each)", setups.Load(), got, want, Contenders)
	}
}
