package bench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Workload shapes.
const (
	// Contenders is the number of independent clients contending for one
	// key in the Handoff workload.
	Contenders = 8
	// Goroutines is how many goroutines share one client in Throughput.
	Goroutines = 32
	// Keys is how many keys Throughput spreads over.
	Keys = 1000
)

// takeRelease is one uncontended take + release; it fails b when the key
// was not free. A Try that gave up without an error is tried again, twice
// at most: api.Lock's one attempt is bounded by a timer (consulTryStop),
// which a loaded machine can run out before the attempt's first read; the
// requests of the attempt that gave up are counted.
func takeRelease(b *testing.B, ctx context.Context, c Client, key string) {
	h, ok, err := c.Try(ctx, key)
	for try := 1; err == nil && !ok && try < 3; try++ {
		h, ok, err = c.Try(ctx, key)
	}
	if err != nil || !ok {
		b.Fatalf("take of an uncontended key %q: ok=%v err=%v", key, ok, err)
	}
	if err := h.Release(ctx); err != nil {
		b.Fatalf("release of %q: %v", key, err)
	}
}

// serverTime starts measuring the server's command time, if the backend
// can; the returned function reports server-us/op.
func serverTime(b *testing.B, be Backend, env Env) func() {
	if be.ServerTime == nil {
		return func() {}
	}
	read := be.ServerTime(b, env)
	before := read(b)
	return func() {
		b.ReportMetric((read(b)-before)/float64(b.N), "server-us/op")
	}
}

// TakeRelease measures uncontended take + release pairs on one key by one
// goroutine: ns/op and ops/s, and where the backend can tell, the time
// the server spent on them (server-us/op).
func TakeRelease(b *testing.B, be Backend, lib Lib, env Env, prefix string) {
	c := lib.Setup(b, env)()
	ctx := context.Background()
	key := prefix + "k"
	for range 10 { // connections, script caches, lease and session pools
		takeRelease(b, ctx, c, key)
	}
	b.ReportAllocs()
	report := serverTime(b, be, env)
	b.ResetTimer()
	for range b.N {
		takeRelease(b, ctx, c, key)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	report()
}

// holding is one turn of one contender with the lock.
type holding struct {
	who        int
	start, end time.Time // after the take returned; before the release was called
}

// Handoff measures b.N hand-offs of one key between Contenders clients,
// each with connections of its own as separate processes would have.
//
// Each contender takes the key (waiting as its library waits), holds it,
// releases it, and once another contender has taken the key it comes back
// after a random pause, uniform over [0, P), and waits again. P is
// HoldTime, or the library's PollPeriod if longer, so that contenders that
// poll at a fixed interval start waiting at independent phases of it and
// do not fall in step. A holder releases only when it has held the key for
// HoldTime and every other contender has been waiting (inside its take
// call) for at least HoldTime plus FirstAttemptFactor refused attempts of
// the library (see FirstAttemptFactor): at every release Contenders-1
// contenders are waiting, few of them still in their first attempts, and
// every hand-off goes from one contender to another.
//
// It reports the latency from a holder's release call to the next
// holder's take (ns/handoff-p50, ns/handoff-p99), the spread of takes over
// the contenders (acq-cv: their coefficient of variation, 0 when even;
// acq-min/max: the fewest over the most), and the requests all contenders
// sent per hand-off (req/handoff), counted by the backend's Load meter
// from the first release to the last take (logged by request kind where
// the meter tells them apart).
// ns/op is one holding plus one hand-off.
func Handoff(b *testing.B, be Backend, lib Lib, env Env, prefix string) {
	handoff(b, be, lib, env, prefix, Contenders, Contenders, false)
}

// handoff is the Handoff workload with waiters contenders sharing
// nclients clients (contender i uses client i mod nclients), as waiters
// sharing a process's client would. With quiet (the Scaling workloads),
// the measured hand-offs are those of a hot key in its steady state, at
// every number of waiters: the first holder keeps the key until the
// waiters are quiet (see quiesce), and then the key goes round unmeasured
// until every client has taken it once since (see warmUp), so that
// neither the waiters' start-up nor a client's first take after the long
// hold is counted in a hand-off. The measured window then runs for b.N
// hand-offs, and with quiet for as many more as it takes to span
// WindowPeriods of the backend's Background period: the warm-up leaves
// every client's clock-driven renewal just done (on etcd each client's
// first take after the long hold renews its pooled lease), so a shorter
// window would count none of the next ones, which a hot key pays all the
// time. The hand-offs measured are reported (handoffs).
//
// The calibration run (b.N == 1), whose figures are not reported, skips
// the quiescence, the warm-up hand-offs and the window's minimum span.
func handoff(b *testing.B, be Backend, lib Lib, env Env, prefix string, waiters, nclients int, quiet bool) {
	var load Meter
	if be.Load != nil {
		env, load = be.Load(b, env)
	}
	pause := max(HoldTime, lib.PollPeriod)
	newClient := lib.Setup(b, env)
	shared := make([]Client, nclients)
	for i := range shared {
		shared[i] = newClient()
	}
	clients := make([]Client, waiters)
	for i := range clients {
		clients[i] = shared[i%nclients]
	}
	key := prefix + "k"
	// With more waiters than Contenders, the first holder keeps the key a
	// millisecond per waiter longer, and then until the waiters are quiet
	// (see quiesce), so that every waiter has sent its first attempt and
	// queued (on a loaded machine, entering the take call is not sending
	// it, and 512 waiters queueing at once keep a server busy for seconds)
	// before the first hand-off is measured.
	var settle time.Duration
	if waiters > Contenders {
		settle = time.Duration(waiters) * time.Millisecond
	}
	quiet = quiet || settle > 0
	timeout := env.HandoffTimeout
	switch {
	case timeout < 0:
		b.Fatalf("hand-off: Env.HandoffTimeout %v is negative", timeout)
	case timeout == 0:
		timeout = DefaultHandoffTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Each shared client first takes and releases WarmConns keys at once,
	// so that every connection of its pool has run the take and the
	// release (a database client prepares a statement on each connection
	// at its first use there: a one-off round trip that belongs to no
	// hand-off, yet would be counted in the first hand-offs that reach that
	// connection).
	var (
		warm    sync.WaitGroup
		warmErr = make(chan error, len(shared)*WarmConns())
	)
	for ci, c := range shared {
		for j := range WarmConns() {
			warm.Go(func() {
				h, err := c.Lock(ctx, fmt.Sprintf("%swarm-%d-%d", prefix, ci, j))
				if err == nil {
					err = h.Release(ctx)
				}
				if err != nil {
					warmErr <- err
				}
			})
		}
	}
	warm.Wait()
	close(warmErr)
	if err := <-warmErr; err != nil {
		b.Fatalf("warm-up: %v", err)
	}
	waited := HoldTime + FirstAttemptFactor*refusedAttempt(b, ctx, shared[0], shared[1%len(shared)], key)
	for _, c := range clients { // connections, subscriptions, pools
		h, err := c.Lock(ctx, key)
		if err != nil {
			b.Fatalf("warm-up take: %v", err)
		}
		if err := h.Release(ctx); err != nil {
			b.Fatalf("warm-up release: %v", err)
		}
	}

	calibration := b.N == 1
	var window time.Duration // the least span of the measured hand-offs
	if quiet && !calibration {
		window = WindowPeriods * be.Background
	}
	var (
		mu      sync.Mutex
		taken   int       // holdings so far, measured or not
		first   = -1      // the first measured holding; -1 until it is known
		hist    []holding // the measured holdings: b.N hand-offs or more between them
		done    bool      // the last measured holding was taken
		warmup  = warmUp{seen: make([]bool, nclients)}
		turn    = make(chan struct{})             // closed by the next take
		waiting = make([]time.Time, len(clients)) // when each began waiting; zero when not
		arrival = make(chan struct{})             // closed when a contender begins waiting
		errs    []error
		wg      sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}
	// holdUntilReady returns once contender i, holding since start, may
	// release: HoldTime passed and every other contender has been waiting
	// for waited.
	holdUntilReady := func(i int, start time.Time) bool {
		for {
			mu.Lock()
			ready, all := start.Add(HoldTime), true
			for j, t := range waiting {
				switch {
				case j == i:
				case t.IsZero():
					all = false
				case t.Add(waited).After(ready):
					ready = t.Add(waited)
				}
			}
			next := arrival
			mu.Unlock()
			if all {
				return sleepCtx(ctx, time.Until(ready))
			}
			select {
			case <-next:
			case <-ctx.Done():
				return false
			}
		}
	}

	var counts Counts
	b.ResetTimer()
	for i, c := range clients {
		wg.Go(func() {
			for {
				mu.Lock()
				waiting[i] = time.Now()
				close(arrival)
				arrival = make(chan struct{})
				mu.Unlock()
				h, err := c.Lock(ctx, key)
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("contender %d: take: %w", i, err))
					}
					return
				}
				start := time.Now()
				mu.Lock()
				waiting[i] = time.Time{}
				idx := taken
				if done { // the run ended while this contender was taking
					mu.Unlock()
					_ = h.Release(context.Background())
					return
				}
				taken++
				switch {
				case idx == 0 && (!quiet || calibration):
					first = 0
				case idx > 0 && first < 0 && warmup.took(i%nclients) && idx >= MinWarmUp:
					first = idx // every client took since the quiescence
				}
				m := idx - first // the measured holding's index, if first >= 0
				measured, last := first >= 0, false
				if measured {
					hist = append(hist, holding{who: i, start: start})
					// b.N hand-offs since the first measured release, and
					// the window's span since it.
					last = m >= b.N && (window <= 0 || start.Sub(hist[0].end) >= window)
					done = last
				}
				if last && load != nil {
					// The meter runs from the first measured release to
					// the last take: the waiters' start-up, the warm-up
					// hand-offs and the waiters' leaving at the end are
					// not hand-offs of a hot key in its steady state.
					counts = load.Stop(b)
				}
				close(turn)
				turn = make(chan struct{})
				next := turn
				mu.Unlock()

				if !last && !holdUntilReady(i, start) {
					_ = h.Release(context.Background())
					return
				}
				if idx == 0 && (!sleepCtx(ctx, settle) || quiet && !calibration && !quiesce(b, ctx, load, nclients)) {
					_ = h.Release(context.Background())
					return
				}
				if measured && m == 0 && load != nil {
					load.Start(b)
				}
				if measured {
					mu.Lock()
					hist[m].end = time.Now()
					mu.Unlock()
				}
				if err := h.Release(context.Background()); err != nil {
					fail(fmt.Errorf("contender %d: release: %w", i, err))
					return
				}
				if last {
					cancel() // the others stop waiting
					return
				}
				select { // contend again once another contender took it,
				case <-next:
				case <-ctx.Done():
					return
				}
				if !sleepCtx(ctx, rand.N(pause)) { // after a random pause
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if len(errs) > 0 {
		b.Fatalf("hand-off: %v", errs[0])
	}
	if !done {
		// The run ended by its timeout before its last measured take
		// (with the warm-up unfinished, before its first): its figures
		// would not be those of the window asked for.
		b.Fatalf("hand-off: the run timed out after %v with %d of at least %d measured holdings; %d of %d clients took the key after the quiescence (the warm-up ends when all have)",
			timeout, len(hist), b.N+1, warmup.n, nclients)
	}
	n := len(hist) - 1 // measured hand-offs
	if quiet {
		b.ReportMetric(float64(first), "warmup-handoffs")
		b.ReportMetric(float64(n), "handoffs")
	}

	lat := make([]time.Duration, 0, n)
	per := make([]float64, waiters)
	per[hist[0].who]++
	for i := 1; i < len(hist); i++ {
		d := hist[i].start.Sub(hist[i-1].end)
		if hist[i-1].end.IsZero() { // it never came to release: the run ended while it held the key
			b.Fatalf("hand-off %d: holder %d took the key while holder %d held it: mutual exclusion broken",
				i, hist[i].who, hist[i-1].who)
		}
		if d < 0 {
			b.Fatalf("hand-off %d: holder %d took the key %v before holder %d released it: mutual exclusion broken",
				i, hist[i].who, -d, hist[i-1].who)
		}
		lat = append(lat, d)
		per[hist[i].who]++
	}
	slices.Sort(lat)
	b.ReportMetric(float64(percentile(lat, 0.50)), "ns/handoff-p50")
	b.ReportMetric(float64(percentile(lat, 0.99)), "ns/handoff-p99")
	mean := float64(len(hist)) / float64(waiters)
	var ss float64
	for _, n := range per {
		ss += (n - mean) * (n - mean)
	}
	b.ReportMetric(math.Sqrt(ss/float64(waiters))/mean, "acq-cv")
	b.ReportMetric(slices.Min(per)/slices.Max(per), "acq-min/max")
	if counts != nil {
		b.ReportMetric(counts["req"]/float64(n), "req/handoff")
		if parts := breakdown(counts, float64(n)); b.N > 1 && parts != "" {
			b.Logf("breakdown %s/%s per hand-off: %s", be.Name, lib.Name, parts)
		}
	}
}

// Quiescence: the waiters of a Scaling workload are quiet once each of
// QuietWindows consecutive windows of at least QuietWindow counts at most
// one request per client (background renewals) and the server has
// answered all it received (the meter's "inflight", where it tells); a
// library whose waiters poll never is, and is measured after MaxQuiesce.
const (
	// QuietWindow is the window in which quiet waiters send at most one
	// request per client.
	QuietWindow = 100 * time.Millisecond
	// QuietWindows is how many windows in a row must be quiet: the fewest
	// whose span (300 ms) is longer than the longest period at which a
	// library here renews what it keeps idle (consullock's sessions: every
	// 250 ms at the bench's TTL), so that every such renewal falls in one
	// of them, and the renewals of what the start-up left surplus keep the
	// waiters from looking quiet, mostly until the library's one-off
	// clean-up of it (consullock's pool trim, destroying the idle sessions
	// beyond its spare) is done. What is left of that clean-up falls in
	// the warm-up hand-offs (see warmUp).
	QuietWindows = 3
	// MaxQuiesce is the longest the first holder waits for quiet.
	MaxQuiesce = 5 * time.Second
	// MinWarmUp is the fewest unmeasured hand-offs after the quiescence,
	// whoever took them, so that every library's window starts as deep
	// into the run: after the 8 hand-offs in which every client of a
	// queued PostgreSQL key takes it once, its hand-offs still took about
	// twice their steady time (medians over 8-waiter runs on a loaded
	// machine: 3.6 ms over hand-offs 1-8, 3.0 ms over 9-20, 1.9 ms over
	// 21-40, 1.5 ms after; flat with plan_cache_mode=force_generic_plan,
	// so mostly the server planning the statements afresh), and the
	// Scaling window measured it colder than unqueued waiting, whose
	// random order makes the warm-up last 20 to 40 hand-offs.
	MinWarmUp = 40
	// WindowPeriods is how many of the backend's Background periods a
	// Scaling window spans at least: with two, a window that starts just
	// after every client's renewal counts at least half of the renewals
	// that fall due per period over its span, where one shorter than a
	// period may count none.
	WindowPeriods = 2
)

// quiesce waits until the load meter counts at most nclients requests in
// each of QuietWindows consecutive QuietWindows, or MaxQuiesce passed:
// until waiters that all began waiting at once have finished queueing,
// and their libraries have cleaned up after that burst, whose requests are
// a one-off cost per waiter and not part of any hand-off. It returns false
// when ctx ended. Without a meter it returns at once.
func quiesce(b *testing.B, ctx context.Context, load Meter, nclients int) bool {
	if load == nil {
		return ctx.Err() == nil
	}
	deadline := time.Now().Add(MaxQuiesce)
	// One reading of the meter ends a window and begins the next (etcd's
	// takes tens of milliseconds on a loaded machine).
	load.Start(b)
	var before float64 // requests counted since Start, at the window's start
	for quiet := 0; quiet < QuietWindows && time.Now().Before(deadline); {
		if !sleepCtx(ctx, QuietWindow) {
			return false
		}
		c := load.Stop(b)
		quiet++
		if c["req"]-before > float64(nclients) || c["inflight"] > 0 {
			quiet = 0
		}
		before = c["req"]
	}
	return ctx.Err() == nil
}

// warmUp tells when every client has taken the key since the quiescence:
// from then on each client's next take finds what a hot key's would (on
// etcd, a pooled lease that a take in the last TTL slack renewed; after
// the long hold of the quiescence every client's is stale, and each
// client's first take renews it in line), so the hand-offs after it are
// measured. With 8 clients that is at least 8 hand-offs; with waiters
// served in arrival order (queued) little more, with waiters woken at
// random some 22 on average (every client's turn comes at random). The
// warm-up also lasts MinWarmUp hand-offs at least.
type warmUp struct {
	seen []bool // by client: took the key since the quiescence
	n    int    // clients that took
}

// took records that client c took the key and reports whether every
// client has.
func (w *warmUp) took(c int) bool {
	if !w.seen[c] {
		w.seen[c] = true
		w.n++
	}
	return w.n == len(w.seen)
}

// FirstAttempt: in the hand-off workloads a holder releases only once
// every other contender has been waiting for HoldTime plus
// FirstAttemptFactor times the library's refused attempt (the median of
// FirstAttemptSamples calls of its Try on the held key, measured in the
// same run before the workload), so that few of them are still in their
// first attempts at the release. A take already on its way when the key
// is released does not wait to be woken: winning with it is barging in
// (a queue forbids it), not a hand-off to a waiter, yet it would be
// measured as a fast one. On etcd, where a take (a transaction, the WAL
// synced) takes about 2 ms, longer than HoldTime, the newest arrival's
// first attempt won 54 to 64% of unqueued hand-offs with 8 waiters before
// the workloads waited for it; with this wait, a take that had not been
// woken still won 10 to 14% of them in a one-off probe on a loaded
// machine (a refused etcd take has a long tail).
const (
	FirstAttemptFactor  = 2
	FirstAttemptSamples = 9
)

// refusedAttempt returns the median time of FirstAttemptSamples refused
// attempts (Try) of c on key while holder holds it. Both are clients of
// the workload: a client made for the measurement would go on sending its
// library's background requests (consullock's idle-session renewals,
// etcdlock's queue lease keep-alives) into the measured window.
func refusedAttempt(b *testing.B, ctx context.Context, c, holder Client, key string) time.Duration {
	h, err := holder.Lock(ctx, key)
	if err != nil {
		b.Fatalf("attempt timing: take: %v", err)
	}
	times := make([]time.Duration, 0, FirstAttemptSamples)
	for range FirstAttemptSamples {
		start := time.Now()
		_, ok, err := c.Try(ctx, key)
		times = append(times, time.Since(start))
		if err != nil || ok {
			b.Fatalf("attempt timing: an attempt on a held key: ok %v, %v", ok, err)
		}
	}
	if err := h.Release(ctx); err != nil {
		b.Fatalf("attempt timing: release: %v", err)
	}
	slices.Sort(times)
	return percentile(times, 0.5)
}

// sleepCtx sleeps for d, or returns false when ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// percentile returns the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Throughput measures take + release attempts by Goroutines goroutines
// sharing one client over Keys keys, one attempt per operation (a key
// another goroutine holds counts as a miss, reported as miss-%).
func Throughput(b *testing.B, be Backend, lib Lib, env Env, prefix string) {
	c := lib.Setup(b, env)()
	keys := make([]string, Keys)
	for i := range keys {
		keys[i] = prefix + strconv.Itoa(i)
	}
	ctx := context.Background()
	for i := range Goroutines { // connections and pools, as in steady state
		takeRelease(b, ctx, c, keys[i])
	}
	var misses atomic.Int64
	var failed atomic.Value
	b.SetParallelism((Goroutines + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ReportAllocs()
	report := serverTime(b, be, env)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := rand.IntN(len(keys))
		for pb.Next() {
			i = (i + 1) % len(keys)
			h, ok, err := c.Try(ctx, keys[i])
			switch {
			case err != nil:
				failed.CompareAndSwap(nil, err)
			case !ok:
				misses.Add(1)
			default:
				if err := h.Release(ctx); err != nil {
					failed.CompareAndSwap(nil, err)
				}
			}
		}
	})
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatalf("take + release: %v", err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	b.ReportMetric(100*float64(misses.Load())/float64(b.N), "miss-%")
	report()
}

// RoundTrips counts, at the server, the requests of b.N uncontended take +
// release pairs by a warm client (its pools filled, its scripts loaded):
// req/op. Background work the library does meanwhile (renewing pooled
// leases or sessions, destroying sessions) is counted too. A breakdown by
// request kind is logged.
func RoundTrips(b *testing.B, be Backend, lib Lib, env Env, prefix string) {
	env, meter := be.Meter(b, env)
	c := lib.Setup(b, env)()
	ctx := context.Background()
	key := prefix + "k"
	for range 20 {
		takeRelease(b, ctx, c, key)
	}
	settle := 300 * time.Millisecond
	if b.N == 1 {
		settle = 0 // the calibration run, whose figures are not reported
	}
	time.Sleep(settle) // let background refills finish
	meter.Start(b)
	b.ResetTimer()
	for range b.N {
		takeRelease(b, ctx, c, key)
	}
	b.StopTimer()
	time.Sleep(settle) // asynchronous clean-up (api.Lock destroys its session after Unlock)
	counts := meter.Stop(b)
	n := float64(b.N)
	b.ReportMetric(counts["req"]/n, "req/op")
	if v, ok := counts["cmds"]; ok {
		b.ReportMetric(v/n, "cmds/op")
	}
	if v, ok := counts["hook-req"]; ok {
		b.ReportMetric(v/n, "hook-req/op")
	}
	if b.N > 1 { // not the calibration run
		b.Logf("breakdown %s/%s: %s", be.Name, lib.Name, breakdown(counts, n))
	}
}

// breakdown formats the parts of counts by request kind (the names with a
// colon), divided by n.
func breakdown(counts Counts, n float64) string {
	var parts []string
	for k, v := range counts {
		if strings.Contains(k, ":") {
			parts = append(parts, fmt.Sprintf("%s=%.2f", k, v/n))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// DefaultHandoffTimeout bounds one hand-off run unless its Env says
// otherwise (Env.HandoffTimeout).
const DefaultHandoffTimeout = 10 * time.Minute
