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
	defer func(d time.Duration) { handoffTimeout = d }(handoffTimeout)
	handoffTimeout = 2 * time.Second
	bt := flag.Lookup("test.benchtime")
	old := bt.Value.String()
	if err := flag.Set("test.benchtime", "3x"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = flag.Set("test.benchtime", old) }()

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
	// one unmeasured hand-off per client.
	r := testing.Benchmark(func(b *testing.B) {
		Scaling(b, mem, idem, Env{}, "served/", ScalingClients)
	})
	if r.N != 3 || r.Extra["warmup-handoffs"] < ScalingClients {
		t.Fatalf("a run with every client served: N=%d, %v; want N=3 and at least %d warm-up hand-offs", r.N, r.Extra, ScalingClients)
	}
	r = testing.Benchmark(func(b *testing.B) {
		Scaling(b, mem, starves, Env{}, "starved/", ScalingClients)
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
