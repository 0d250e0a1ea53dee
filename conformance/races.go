package conformance

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock"
)

// The clauses in this file look for races that a backend loses only now and
// then: an owner check and a change made in two requests, a token drawn
// before the take, calls on one lease that race each other. They run rounds
// until a time budget is spent (a quarter of it with -short) and report the
// first violation; each states its budget in its doc comment.

// violation is a failure found by a goroutine of a statistical clause: the
// clause reports it from the test goroutine.
type violation struct {
	cause string // likely cause, or "" for the clause's own
	msg   string
}

func (v *violation) Error() string { return v.msg }

func violated(format string, args ...any) *violation {
	return &violation{msg: fmt.Sprintf(format, args...)}
}

// lanes runs round(lane, i) for i = 0, 1, … in n goroutines until budget has
// passed and every lane ran at least least rounds (but for no longer than
// four times budget, and at least one round), or until a round reports a
// violation; it then fails the clause with the first violation. It returns
// how many rounds ran in all.
func (c *check) lanes(n, least int, budget time.Duration, round func(lane, i int) *violation) int {
	c.Helper()
	var (
		wg    sync.WaitGroup
		total atomic.Int64
		stop  atomic.Bool
		mu    sync.Mutex
		first *violation
	)
	start := time.Now()
	end, limit := start.Add(budget), start.Add(4*budget)
	more := func(i int) bool {
		now := time.Now()
		return i == 0 || now.Before(end) || i < least && now.Before(limit)
	}
	for lane := range n {
		wg.Go(func() {
			for i := 0; !stop.Load() && more(i); i++ {
				if c.ctx().Err() != nil {
					return
				}
				total.Add(1)
				if v := round(lane, i); v != nil {
					mu.Lock()
					if first == nil {
						first = v
						first.msg += fmt.Sprintf(" (in round %d of lane %d, %v into the clause)", i+1, lane+1, time.Since(start).Round(time.Millisecond))
					}
					mu.Unlock()
					stop.Store(true)
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		if first.cause != "" {
			c.Causef(first.cause, "%s", first.msg)
		}
		c.Fatalf("%s", first.msg)
	}
	return int(total.Load())
}

// raceTTL is the TTL of the expiry-race rounds: short, so that many rounds
// fit in the budget, but ten round trips and 10 ms, so that the holder can
// act before it runs out on a loaded machine.
func (p params) raceTTL(rtt time.Duration) time.Duration {
	return roundUp(max(p.MinTTL, p.gran, 10*rtt, 10*time.Millisecond), p.gran)
}

// lateTTL is the TTL of the clauses that call late in a TTL: at least a
// second, so that a loaded machine still makes the call before the TTL runs
// out; with -short just the short TTL (such rounds are then more often
// inconclusive, and repeated).
func (p params) lateTTL() time.Duration {
	if p.quick {
		return p.short
	}
	return roundUp(max(p.short, time.Second), p.gran)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// probeFree tries to take key with l. It returns a violation if the take
// succeeds (releasing what it took) and nil if the key is held.
func probeHeld(ctx context.Context, l lock.Locker, key, why string) *violation {
	le, err := l.TryAcquire(ctx, key, time.Minute)
	switch {
	case err == nil:
		_ = le.Release(context.WithoutCancel(ctx))
		return violated("%s: another Locker took key %q while a live lease held it", why, key)
	case !errors.Is(err, lock.ErrNotAcquired):
		return violated("%s: TryAcquire(%q) on a held key: got %v, want ErrNotAcquired", why, key, err)
	}
	return nil
}

// sleepUntil sleeps until t; for the last 2 ms it yields instead of
// sleeping, because timers fire late (by milliseconds on a loaded machine)
// and the race clauses aim at instants.
func sleepUntil(ctx context.Context, t time.Time) {
	if d := time.Until(t) - 2*time.Millisecond; d > 0 {
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return
		}
	}
	for time.Now().Before(t) && ctx.Err() == nil {
		runtime.Gosched()
	}
}

// testStaleCallsAtExpiry times a lease's own Release or Refresh at the
// instant its TTL runs out, while another Locker takes the key the moment it
// is free. A backend whose owner check and change are two requests (GET then
// DEL, GET then PEXPIRE) sometimes checks while it still holds and deletes
// or shortens the next holder's lock.
//
// Each lane aims its calls by a walk: a call that found its lease live aims
// the next one later, one that found it expired aims it earlier, so that
// calls straddle the instant of expiry as the backend (and the machine's
// scheduling) shows it, within a dither of one TTL step and a few round
// trips. It runs 2 lanes of fresh keys for 2 s (0.5 s with -short), each at
// least one round (one Release, one Refresh); with TTLs of 10 ms or less, at
// least 100 rounds each (25 with -short), for up to 8 s (2 s), because a
// loaded machine runs few rounds in 2 s. With a 1 ms TTL step that is
// hundreds of calls; with steps of a second only a few, because each round
// waits out a TTL.
func testStaleCallsAtExpiry(c *check, p params) {
	const lanes = 2
	type lockers struct{ a, b, probe lock.Locker }
	ls := make([]lockers, lanes)
	for i := range ls {
		ls[i] = lockers{p.newLocker(c), p.newLocker(c), p.newLocker(c)}
	}
	ctx := c.ctx()

	// rtt is a TryAcquire's round trip (a refused one: the cheapest), to
	// size the TTL and the dither.
	rtt := measureRTT(c, p, ls[0].a, ls[0].b)
	ttl := p.raceTTL(rtt)
	spread := p.gran + 8*rtt
	step := max(spread/8, 20*time.Microsecond)
	aims := make([]time.Duration, lanes) // per lane, relative to the lease's local deadline
	var skipped, before atomic.Int64     // rounds whose take was refused; calls that found the lease live
	pause := time.Duration(0)            // between the taker's attempts
	if p.gran > time.Millisecond {
		pause = p.gran / 200
	}

	least := 1 // coarse TTLs: a round costs a TTL
	if ttl <= 10*time.Millisecond {
		least = p.rounds(100, 25) // a machine under load runs few rounds in the budget
	}
	rounds := c.lanes(lanes, least, p.budget(2*time.Second), func(lane, i int) *violation {
		l := ls[lane]
		key := c.key(fmt.Sprintf("lane-%d/round-%d", lane, i))
		release := (i*lanes+lane)%2 == 0
		op := "Release"
		if !release {
			op = "Refresh"
		}
		sent := time.Now()
		a, err := l.a.TryAcquire(ctx, key, ttl)
		if errors.Is(err, lock.ErrNotAcquired) {
			// A take that outlasted its short TTL may refuse (kvlock checks
			// that it still holds after drawing the token): no round.
			skipped.Add(1)
			return nil
		}
		if err != nil {
			return violated("TryAcquire(%q, %v) on a free key: %v", key, ttl, err)
		}
		expiry := sent.Add(ttl)
		// The server counted the TTL from some moment before the take's
		// answer came back, which a loaded machine (or a client's
		// connection pool) can delay far past sent: the take is "held too
		// long" only counting from its answer.
		answered := time.Now()

		// The taker spins from a little before the expiry until it holds
		// the key, or until the key was held far too long.
		type taken struct {
			le         lock.Lease
			sent, done time.Time
			err        error
		}
		got := make(chan taken, 1)
		var giveUp atomic.Int64 // unix nanos after which the taker stops
		giveUp.Store(answered.Add(ttl + p.expiryBound(ttl) + ttl).UnixNano())
		target := expiry.Add(aims[lane] + time.Duration(float64(spread)*(frac(i*lanes+lane)-0.5)))
		go func() {
			sleepUntil(ctx, minTime(target, expiry).Add(-spread-p.gran))
			for {
				s := time.Now()
				le, err := l.b.TryAcquire(ctx, key, p.long)
				if err == nil || !errors.Is(err, lock.ErrNotAcquired) {
					got <- taken{le: le, sent: s, done: time.Now(), err: err}
					return
				}
				if s.UnixNano() > giveUp.Load() { // judged by when the probe was sent: a late answer proves nothing
					got <- taken{err: fmt.Errorf("still held %v after the TTL %v of its last holder (counted from the take's answer)", time.Since(answered.Add(ttl)), ttl)}
					return
				}
				if pause > 0 {
					time.Sleep(pause) // polling the server: expiry sends no event
				} else {
					runtime.Gosched() // let the holder's goroutine run at its instant
				}
			}
		}()

		// The holder's own call, aimed at the expiry.
		sleepUntil(ctx, target)
		opSent := time.Now()
		var opErr error
		if release {
			opErr = a.Release(ctx)
		} else {
			opErr = a.Refresh(ctx, ttl)
			if opErr == nil {
				giveUp.Add(int64(time.Since(opSent) + ttl))
			}
		}
		opDone := time.Now()
		b := <-got
		if b.err != nil {
			return violated("the next taker of %q: %v", key, b.err)
		}
		defer func() { _ = b.le.Release(context.WithoutCancel(ctx)) }()
		if opErr == nil {
			before.Add(1)
			aims[lane] += step
		} else {
			aims[lane] -= step
		}

		if opErr != nil && !errors.Is(opErr, lock.ErrNotHeld) {
			return violated("%s of a lease at the end of its TTL: %v, want nil or an error matching ErrNotHeld", op, opErr)
		}
		if opErr == nil && b.done.Before(opSent) {
			return violated("%s returned nil although another lease had taken the key (its take returned %v before the %s was sent)",
				op, opSent.Sub(b.done), op)
		}
		if !release {
			// A refresh that reached the newer holder's key shortened it to
			// the race TTL: outlive that before probing.
			sleepUntil(ctx, opDone.Add(ttl+p.slack+p.gran))
		}
		if v := probeHeld(ctx, l.probe, key, fmt.Sprintf("after a %s at the end of the earlier lease's TTL (sent %v before its local deadline), the newer holder's lock must stand", op, expiry.Sub(opSent))); v != nil {
			return v
		}
		if err := b.le.Release(ctx); err != nil {
			return violated("the newer holder's Release after the earlier lease's %s at its expiry: %v (it lost its lock)", op, err)
		}
		return nil
	})
	c.Logf("%d rounds with TTL %v (%d skipped: the take was refused); %d calls found the lease live; calls aimed %v ± %v from the local deadline (round trip %v)",
		rounds, ttl, skipped.Load(), before.Load(), aims, spread/2, rtt)
	if n := skipped.Load(); n > int64(rounds)/2 {
		c.Fatalf("%d of %d takes of a fresh key with TTL %v were refused", n, rounds, ttl)
	}
}

// frac returns the fractional part of i times the golden ratio: a sweep of
// [0, 1) that covers it evenly for any number of rounds.
func frac(i int) float64 {
	const phi = 0.6180339887498949
	v := float64(i) * phi
	return v - float64(int64(v))
}

// measureRTT returns the median time of a few refused TryAcquire calls.
func measureRTT(c *check, p params, holder, other lock.Locker) time.Duration {
	c.Helper()
	key := c.key("rtt")
	le := c.take(holder, key, p.long)
	defer c.release(le)
	ds := make([]time.Duration, 7)
	for i := range ds {
		start := time.Now()
		_, err := other.TryAcquire(c.ctx(), key, p.long)
		ds[i] = time.Since(start)
		if !errors.Is(err, lock.ErrNotAcquired) {
			c.Fatalf("TryAcquire of a held key: got %v, want ErrNotAcquired", err)
		}
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// testStaleCallsNearNewerExpiry calls Release and Refresh of two stale
// leases (one expired, one released) at half, three quarters and seven
// eighths of a newer holder's TTL (see lateTTL: at least a second). Each
// must report ErrNotHeld, the newer holder must still hold the key after
// each, and its lease must still end at its own TTL. A round whose last
// calls a stalled machine made only after the newer TTL had run out proves
// nothing and is run again, up to 3 times.
func testStaleCallsNearNewerExpiry(c *check, p params) {
	c.conclusive(func(attempt int) bool { return staleCallsNearNewerExpiry(c, p, attempt) })
}

// conclusive runs round(0), round(1), … until one reports that it was
// conclusive (a stalled machine did not make its check come too late), up
// to 3 times, and logs if none was.
func (c *check) conclusive(round func(attempt int) bool) {
	const attempts = 3
	for attempt := range attempts {
		if round(attempt) {
			return
		}
	}
	c.Logf("inconclusive: in each of %d rounds the machine was too slow to call before the TTL ran out", attempts)
}

// staleCallsNearNewerExpiry is one round of testStaleCallsNearNewerExpiry.
// It reports whether the round was conclusive.
func staleCallsNearNewerExpiry(c *check, p params, attempt int) bool {
	l, newerL, probe := p.newLocker(c), p.newLocker(c), p.newLocker(c)
	key := c.key(fmt.Sprint("attempt-", attempt))
	expired := c.take(l, key, p.short)
	sent := time.Now()
	released := c.awaitFree(probe, key, p.long, p.expiryBound(p.short)-time.Since(sent)+p.gran, "a short lease must expire")
	c.release(released)

	ttl := p.lateTTL()
	taken := time.Now()
	newer := c.take(newerL, key, ttl)
	end := taken.Add(ttl)
	conclusive := true
	for _, at := range []struct {
		num, den int
	}{{1, 2}, {3, 4}, {7, 8}} {
		when := taken.Add(ttl * time.Duration(at.num) / time.Duration(at.den))
		time.Sleep(time.Until(when)) // the newer holder's clock is what is under test
		where := fmt.Sprintf("at %d/%d of the newer holder's TTL %v", at.num, at.den, ttl)
		for _, stale := range []struct {
			name string
			le   lock.Lease
		}{{"an expired lease", expired}, {"a released lease", released}} {
			c.notHeld(fmt.Sprintf("Release of %s %s", stale.name, where), stale.le.Release(c.ctx()))
			c.notHeld(fmt.Sprintf("Refresh of %s %s", stale.name, where), stale.le.Refresh(c.ctx(), p.long))
		}
		c.refusedBefore(probe, key, end, "stale calls "+where+" must leave the newer holder's lock in place")
		if time.Now().After(end) {
			conclusive = false // the calls may have come after the newer lease ended
			break
		}
	}
	c.release(c.awaitFree(probe, key, p.long, p.expiryBound(ttl)-time.Since(taken)+p.gran,
		"stale refreshes must not extend the newer holder's TTL"))
	c.notHeld("Release of the newer lease after it expired", newer.Release(c.ctx()))
	return conclusive
}

// testRefreshLate refreshes a lease at three quarters of its TTL (see
// lateTTL: at least a second) and checks, with a probe after the old
// expiry, that the deadline really moved. A round whose refresh a stalled
// machine sent only after the TTL ran out proves nothing and is run again,
// up to 3 times.
func testRefreshLate(c *check, p params) {
	c.conclusive(func(attempt int) bool { return refreshLate(c, p, attempt) })
}

// refreshLate is one round of testRefreshLate. It reports whether the round
// was conclusive.
func refreshLate(c *check, p params, attempt int) bool {
	l, other := p.newLocker(c), p.newLocker(c)
	key := c.key(fmt.Sprint("attempt-", attempt))
	ttl := p.lateTTL()
	sent := time.Now()
	le := c.take(l, key, ttl)
	time.Sleep(time.Until(sent.Add(ttl * 3 / 4))) // late in the TTL: the clock is what is under test
	extended := roundUp(p.expiryBound(ttl)+ttl, p.gran)
	refreshed := time.Now()
	if err := le.Refresh(c.ctx(), extended); err != nil {
		if errors.Is(err, lock.ErrNotHeld) && time.Since(sent) > ttl {
			c.Logf("inconclusive: the refresh at 3/4 of %v returned after the TTL ran out", ttl)
			c.release(c.take(other, key, p.long))
			return false
		}
		c.Fatalf("Refresh at 3/4 of the TTL %v of a held lease: %v", ttl, err)
	}
	if d, ok := le.(lock.Deadliner); ok {
		if dl := d.Deadline(); dl.Before(refreshed.Add(extended - p.gran)) {
			c.Errorf("Deadline() is %v after the refresh to %v was sent: it did not move", dl.Sub(refreshed), extended)
		}
	}
	time.Sleep(time.Until(sent.Add(p.expiryBound(ttl)))) // past the old expiry
	c.refusedBefore(other, key, refreshed.Add(extended),
		fmt.Sprintf("a Refresh to %v at 3/4 of the TTL %v returned nil, so the key must be held after the old expiry", extended, ttl))
	c.release(le)
	return true
}

// testTTLRoundsUp takes a key for half a TTL step and another for a whole
// number of steps plus a half: both must be held for at least their TTL
// (checked where a rounded-down TTL would already have run out) and must
// expire.
func testTTLRoundsUp(c *check, p params) {
	if p.gran < 2 {
		c.Skip("a TTL step of a nanosecond has no fraction")
	}
	l, other := p.newLocker(c), p.newLocker(c)
	half := p.gran / 2
	subKey, mixedKey := c.key("half-step"), c.key("steps-and-a-half")
	subSent := time.Now()
	c.take(l, subKey, half)
	c.refusedBefore(other, subKey, subSent.Add(half), fmt.Sprintf("a TTL of half a step (%v) must not round down to nothing", half))
	mixed := p.short + half
	mixedSent := time.Now()
	c.take(l, mixedKey, mixed)
	time.Sleep(time.Until(mixedSent.Add(p.short + half/2))) // past the rounded-down TTL
	c.refusedBefore(other, mixedKey, mixedSent.Add(mixed), fmt.Sprintf("a TTL of %v must be held past %v (checked at %v)", mixed, p.short, p.short+half/2))
	c.release(c.awaitFree(other, subKey, p.long, p.expiryBound(max(p.gran, p.MinTTL))-time.Since(subSent),
		fmt.Sprintf("a lease with a TTL of half a step (%v) must expire", half)))
	c.release(c.awaitFree(other, mixedKey, p.long, p.expiryBound(roundUp(mixed, p.gran))-time.Since(mixedSent),
		fmt.Sprintf("a lease with TTL %v must expire", mixed)))
}

// testTokensLongRun takes and releases one key up to 5,000 times within
// 3 s (1,250 and 0.75 s with -short), alternating two Lockers: every token
// must be greater than the one before.
func testTokensLongRun(c *check, p params) {
	ls := []lock.Locker{p.newLocker(c), p.newLocker(c)}
	key := c.key("k")
	budget := p.budget(3 * time.Second)
	n := p.rounds(5000, 1250)
	end := time.Now().Add(budget)
	var last uint64
	i := 0
	for ; i < n && (i < 2 || time.Now().Before(end)); i++ {
		le := c.take(ls[i%2], key, p.long)
		if tok := le.Token(); tok <= last {
			c.Fatalf("take %d of one key: Token() = %d, not greater than the previous holder's %d", i+1, tok, last)
		}
		last = le.Token()
		c.release(le)
	}
	c.Logf("%d takes of one key in %v", i, budget-time.Until(end))
}

// testTokenOrder has 8 goroutines on 4 Lockers race for one key with
// TryAcquire, each holding it for an instant, for 2 s (0.5 s with -short).
// Holdings ordered by time must carry increasing tokens: a token issued
// before the take lets a slow taker hold the key after a faster taker that
// drew a greater token.
func testTokenOrder(c *check, p params) {
	const lockers, workers = 4, 8
	ls := make([]lock.Locker, lockers)
	for i := range ls {
		ls[i] = p.newLocker(c)
	}
	key := c.key("k")
	ctx := c.ctx()
	end := time.Now().Add(p.budget(2 * time.Second))
	var (
		rec recorder
		wg  sync.WaitGroup
	)
	for w := range workers {
		l := ls[w%lockers]
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				le, err := l.TryAcquire(ctx, key, p.long)
				if errors.Is(err, lock.ErrNotAcquired) {
					runtime.Gosched()
					continue
				}
				if err != nil {
					rec.fail(err)
					return
				}
				start := time.Now()
				runtime.Gosched()
				stop := time.Now()
				rec.held(le, start, stop, le.Release(context.WithoutCancel(ctx)))
			}
		})
	}
	wg.Wait()
	if err := rec.err(); err != nil {
		c.Fatalf("under contention: %v", err)
	}
	if len(rec.hist) < 2 {
		c.Fatalf("only %d holdings in %v of contention", len(rec.hist), p.budget(2*time.Second))
	}
	switch f := checkHistory(rec.hist); {
	case f == nil:
	case f.overlap:
		c.Causef("a take that is not atomic", "%s", f)
	default:
		c.Fatalf("the lease with token %d held the key %v after the lease with token %d had released it: "+
			"the token must be issued while the take holds the key", f.cur.token, f.cur.start.Sub(f.prev.end), f.prev.token)
	}
	c.Logf("%d holdings in order", len(rec.hist))
}

// testConcurrentLeaseCalls runs calls on one lease at once, for 200 rounds
// or 2 s (50 rounds or 0.5 s with -short), three kinds in turn: four
// Refreshes (all must succeed: nothing else can take the key); three
// Refreshes and a Release (the Release must succeed and free the key); two
// Releases (exactly one succeeds, the other reports ErrNotHeld, and the key
// is free).
func testConcurrentLeaseCalls(c *check, p params) {
	l, other := p.newLocker(c), p.newLocker(c)
	ctx := c.ctx()
	n := p.rounds(200, 50)
	end := time.Now().Add(p.budget(2 * time.Second))
	i := 0
	for ; i < n && (i < 3 || time.Now().Before(end)); i++ {
		key := c.key(fmt.Sprint("round-", i))
		le := c.take(l, key, p.long)
		var calls []func() error
		kind := i % 3
		switch kind {
		case 0:
			for range 4 {
				calls = append(calls, func() error { return le.Refresh(ctx, p.long) })
			}
		case 1:
			calls = append(calls, func() error { return le.Release(ctx) })
			for range 3 {
				calls = append(calls, func() error { return le.Refresh(ctx, p.long) })
			}
		case 2:
			for range 2 {
				calls = append(calls, func() error { return le.Release(ctx) })
			}
		}
		errs := make([]error, len(calls))
		var wg sync.WaitGroup
		start := make(chan struct{})
		for j, call := range calls {
			wg.Go(func() {
				<-start
				errs[j] = call()
			})
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			if err != nil && !errors.Is(err, lock.ErrNotHeld) {
				c.Fatalf("round %d: a call on a held lease: %v", i, err)
			}
		}
		switch kind {
		case 0:
			for _, err := range errs {
				if err != nil {
					c.Fatalf("round %d: one of 4 concurrent Refreshes of a held lease reported %v while the lease held its key", i, err)
				}
			}
			c.release(le)
		case 1:
			if errs[0] != nil {
				c.Fatalf("round %d: a Release concurrent with 3 Refreshes of a held lease reported %v", i, errs[0])
			}
		case 2:
			if ok := countNil(errs); ok != 1 {
				c.Fatalf("round %d: %d of 2 concurrent Releases of one held lease returned nil, want exactly 1 (the other ErrNotHeld)", i, ok)
			}
		}
		if kind != 0 {
			c.notHeld(fmt.Sprintf("round %d: Refresh after the lease was released", i), le.Refresh(ctx, p.long))
			after, err := other.TryAcquire(ctx, key, p.long)
			if err != nil {
				c.Fatalf("round %d: after a Release of the lease returned nil the key must be free: TryAcquire: %v", i, err)
			}
			c.release(after)
		}
	}
	c.Logf("%d rounds", i)
}

func countNil(errs []error) int {
	n := 0
	for _, err := range errs {
		if err == nil {
			n++
		}
	}
	return n
}
