package conformance

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/idemlock/lock"
)

func testInvalidInput(c *check, p params) {
	l := p.newLocker(c)
	ctx := c.ctx()
	for _, tc := range []struct {
		name string
		key  string
	}{
		{"empty", ""},
		{"too long", strings.Repeat("k", lock.MaxKeyLen+1)},
		{"invalid UTF-8", "bad\xff\xfekey"},
	} {
		le, err := l.TryAcquire(ctx, tc.key, p.long)
		if !errors.Is(err, lock.ErrInvalidKey) || le != nil {
			c.Errorf("TryAcquire with a key that is %s: got (%v, %v), want a nil Lease and an error matching ErrInvalidKey", tc.name, le, err)
		}
		var ke *lock.KeyError
		if err != nil && !errors.As(err, &ke) {
			c.Errorf("TryAcquire with a key that is %s: error %v is not a *lock.KeyError", tc.name, err)
		}
	}
	key := c.key("k")
	for _, ttl := range []time.Duration{0, -time.Second} {
		le, err := l.TryAcquire(ctx, key, ttl)
		if !errors.Is(err, lock.ErrInvalidTTL) || le != nil {
			c.Errorf("TryAcquire with TTL %v: got (%v, %v), want an error matching ErrInvalidTTL", ttl, le, err)
		}
	}
	//lint:ignore SA1012 a nil context is the bad input under test
	if le, err := l.TryAcquire(nil, key, p.long); err == nil || le != nil { //nolint:staticcheck
		c.Errorf("TryAcquire with a nil context: got (%v, %v), want an error", le, err)
	}
	le := c.take(l, key, p.long)
	if err := le.Refresh(ctx, 0); !errors.Is(err, lock.ErrInvalidTTL) {
		c.Errorf("Refresh with TTL 0: got %v, want an error matching ErrInvalidTTL", err)
	}
	c.refused(p.newLocker(c), key, "after a Refresh with a bad TTL the lease must still hold")
	c.release(le)
}

func testTakeAndRelease(c *check, p params) {
	l := p.newLocker(c)
	key := c.key("k")
	before := time.Now()
	le := c.take(l, key, p.long)
	after := time.Now()
	if le.Key() != key {
		c.Errorf("Lease.Key() = %q, want %q", le.Key(), key)
	}
	if le.Token() == 0 {
		c.Errorf("Lease.Token() = 0; tokens start above zero so that zero can mean none")
	}
	if d, ok := le.(lock.Deadliner); ok {
		dl := d.Deadline()
		lo := before.Add(p.long - p.gran)
		hi := after.Add(max(p.long, p.MinTTL) + p.gran)
		if dl.Before(lo) || dl.After(hi) {
			c.Errorf("Deadline() is %v after the take was sent, want about the TTL %v", dl.Sub(before), p.long)
		}
	}
	c.release(le)
	le2 := c.take(p.newLocker(c), key, p.long)
	c.release(le2)
	le3 := c.take(l, key, p.long)
	c.release(le3)
}

func testHeldKeyRefused(c *check, p params) {
	l := p.newLocker(c)
	key := c.key("k")
	le := c.take(l, key, p.long)
	c.refused(l, key, "the same Locker")
	other := p.newLocker(c)
	c.refused(other, key, "another Locker")
	_, err := other.TryAcquire(c.ctx(), key, p.long)
	var held *lock.NotAcquiredError
	if errors.As(err, &held) && held.Remaining > p.long+p.gran {
		c.Errorf("NotAcquiredError.Remaining = %v, longer than the holder's TTL %v", held.Remaining, p.long)
	}
	c.release(le)
}

func testOneWinner(c *check, p params) {
	const lockers = 4
	ls := make([]lock.Locker, lockers)
	for i := range ls {
		ls[i] = p.newLocker(c)
	}
	oneWinner(c, "TryAcquire calls", 4*lockers, func(i int, key string) (lock.Lease, error) {
		return ls[i%lockers].TryAcquire(c.ctx(), key, p.long)
	})
}

// oneWinner races n attempts on a fresh key, for several rounds, and fails
// the clause unless exactly one wins and every other gets ErrNotAcquired.
func oneWinner(c *check, what string, n int, attempt func(i int, key string) (lock.Lease, error)) {
	c.Helper()
	const rounds = 10
	for round := range rounds {
		key := c.key(fmt.Sprint("round-", round))
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			mu      sync.Mutex
			winners []lock.Lease
			errs    []error
		)
		for i := range n {
			wg.Go(func() {
				<-start
				le, err := attempt(i, key)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					winners = append(winners, le)
				} else if !errors.Is(err, lock.ErrNotAcquired) {
					errs = append(errs, err)
				}
			})
		}
		close(start)
		wg.Wait()
		for _, le := range winners {
			defer func() { _ = le.Release(context.WithoutCancel(c.ctx())) }()
		}
		if len(errs) > 0 {
			c.Fatalf("round %d: losers must get ErrNotAcquired, got %v", round, errs[0])
		}
		if len(winners) != 1 {
			c.Fatalf("round %d: %d of %d concurrent %s won, want exactly 1", round, len(winners), n, what)
		}
	}
}

func testIndependentKeys(c *check, p params) {
	l, other := p.newLocker(c), p.newLocker(c)
	a := c.take(l, c.key("a"), p.long)
	b := c.take(l, c.key("b"), p.long)
	c.release(a)
	c.refused(other, c.key("b"), "releasing key a must not free key b")
	a2 := c.take(other, c.key("a"), p.long)
	c.release(b)
	c.release(a2)
}

// strangeKeys are valid keys that stress escaping and hashing: each must be
// its own lock, distinct from all the others.
func strangeKeys() []string {
	long := strings.Repeat("x", 250)
	return []string{
		"a", "A", "a b", " a", "a ", "a\n", "a\r\n", "a\tb", "a\x00b", "a\x00c", "\x00", "\x01", "\x7f",
		"é", "e\u0301", "日本語", "🔒 lock", "\u200b", "\ufeffbom",
		"a/b", "a/b/", "/a", "a//b", "a/./b", "a/../b", "..", ".", "../x", "a\\b",
		"%", "%20", "a%20b", "a+b", "a?b=c", "a#b", "a&b", "a;b", "a=b", "a,b",
		"key:with:colons", "{tag}", "{a}b", "a{b}", "*", "a*", "[abc]", "?", "\"q\"", "'q'", "$x", "~",
		long, long + "a", long + "b", long[:249] + " ",
		strings.Repeat("y", lock.MaxKeyLen),
		strings.Repeat("y", lock.MaxKeyLen-1) + "z",
		strings.Repeat("日", lock.MaxKeyLen/3),
	}
}

func testStrangeKeys(c *check, p params) {
	l, other := p.newLocker(c), p.newLocker(c)
	keys := strangeKeys()
	leases := make([]lock.Lease, len(keys))
	for i, k := range keys {
		key := c.key("") + k
		if len(key) > lock.MaxKeyLen {
			key = k // the longest keys go in as they are
		}
		leases[i] = c.take(l, key, p.long)
		if leases[i].Key() != key {
			c.Errorf("Lease.Key() = %q, want %q exactly", leases[i].Key(), key)
		}
	}
	for _, le := range leases {
		c.refused(other, le.Key(), "a strange key held by one lease")
	}
	for _, le := range leases {
		c.release(le)
	}
	for _, le := range leases {
		c.release(c.take(other, le.Key(), p.long))
	}
}

func testReleaseTwice(c *check, p params) {
	l := p.newLocker(c)
	le := c.take(l, c.key("k"), p.long)
	c.release(le)
	c.notHeld("second Release", le.Release(c.ctx()))
	// The second release must not free a newer holder either.
	newer := c.take(p.newLocker(c), c.key("k"), p.long)
	c.notHeld("Release of a released lease while another holds the key", le.Release(c.ctx()))
	c.refused(l, c.key("k"), "a released lease's Release must leave the new holder alone")
	c.release(newer)
}

func testRefreshAfterRelease(c *check, p params) {
	l := p.newLocker(c)
	le := c.take(l, c.key("k"), p.long)
	c.release(le)
	c.notHeld("Refresh after Release", le.Refresh(c.ctx(), p.long))
	c.release(c.take(p.newLocker(c), c.key("k"), p.long))
}

func testExpiry(c *check, p params) {
	l, other := p.newLocker(c), p.newLocker(c)
	key := c.key("k")
	sent := time.Now()
	c.take(l, key, p.short)
	time.Sleep(time.Until(sent.Add(p.short / 2))) // the clock is what is under test
	c.refusedBefore(other, key, sent.Add(p.short), fmt.Sprintf("a lease must be held until its TTL %v (checked at half of it)", p.short))
	c.release(c.awaitFree(other, key, p.long, p.expiryBound(p.short)-time.Since(sent), fmt.Sprintf("a lease with TTL %v must expire", p.short)))
}

func testRefreshExtends(c *check, p params) {
	l, other := p.newLocker(c), p.newLocker(c)
	key := c.key("k")
	le := c.take(l, key, p.short)
	extended := 2 * p.expiryBound(p.short)
	refreshed := time.Now()
	if err := le.Refresh(c.ctx(), extended); err != nil {
		c.Fatalf("Refresh of a held lease: %v", err)
	}
	time.Sleep(p.expiryBound(p.short)) // outlive the first TTL: the clock is under test
	c.refusedBefore(other, key, refreshed.Add(extended), fmt.Sprintf("after Refresh to %v the lease must outlive its first TTL %v", extended, p.short))
	if err := le.Refresh(c.ctx(), p.short); err != nil {
		c.Fatalf("second Refresh of a held lease: %v", err)
	}
	c.release(le)
}

// expire takes key with a short TTL and returns the lease once another
// Locker could take the key, releasing that other lease again.
func expire(c *check, p params, l lock.Locker, key string) lock.Lease {
	c.Helper()
	le := c.take(l, key, p.short)
	sent := time.Now()
	probe := p.newLocker(c)
	c.release(c.awaitFree(probe, key, p.long, p.expiryBound(p.short)-time.Since(sent)+p.gran, "a short lease must expire"))
	return le
}

func testExpiredLeaseNotHeld(c *check, p params) {
	l := p.newLocker(c)
	key := c.key("k")
	le := c.take(l, key, p.short)
	// Wait out the TTL without taking the key: the lease must be gone
	// although nobody replaced it.
	time.Sleep(p.expiryBound(p.short)) // the clock is what is under test
	c.notHeld("Refresh after expiry", le.Refresh(c.ctx(), p.long))
	c.notHeld("Release after expiry", le.Release(c.ctx()))
	c.release(c.take(p.newLocker(c), key, p.long))
}

func testStaleRelease(c *check, p params) {
	l := p.newLocker(c)
	key := c.key("k")
	stale := expire(c, p, l, key)
	newer := c.take(p.newLocker(c), key, p.long)
	c.notHeld("Release of an expired lease after another took the key", stale.Release(c.ctx()))
	c.refused(p.newLocker(c), key, "a stale Release must leave the newer holder's lock in place")
	c.release(newer)
}

func testStaleRefresh(c *check, p params) {
	l := p.newLocker(c)
	key := c.key("k")
	stale := expire(c, p, l, key)
	newerCalled := time.Now()
	newer := c.take(p.newLocker(c), key, p.short)
	newerSent := time.Now()
	c.notHeld("Refresh of an expired lease after another took the key", stale.Refresh(c.ctx(), p.long))
	// The newer lease is short: a probe answered after its TTL proves nothing.
	c.refusedBefore(p.newLocker(c), key, newerCalled.Add(p.short), "a stale Refresh must leave the newer holder's lock in place")
	// The newer lease must still expire at its own TTL: the stale refresh
	// must not have extended it.
	c.release(c.awaitFree(p.newLocker(c), key, p.long, p.expiryBound(p.short)-time.Since(newerSent)+p.gran,
		"a stale Refresh must not extend the newer holder's TTL"))
	c.notHeld("Release of the newer lease after it expired", newer.Release(c.ctx()))
}

func testTokensIncrease(c *check, p params) {
	ls := []lock.Locker{p.newLocker(c), p.newLocker(c), p.newLocker(c)}
	key := c.key("k")
	var last uint64
	for i := range 12 {
		le := c.take(ls[i%len(ls)], key, p.long)
		if tok := le.Token(); tok <= last {
			c.Fatalf("take %d: Token() = %d, not greater than the previous holder's %d", i, tok, last)
		}
		last = le.Token()
		c.release(le)
	}
	// A different key's activity must not break this key's order.
	c.release(c.take(ls[0], c.key("other"), p.long))
	le := c.take(ls[1], key, p.long)
	if le.Token() <= last {
		c.Fatalf("Token() = %d after another key was used, not greater than %d", le.Token(), last)
	}
	c.release(le)
}

func testTokensAcrossExpiry(c *check, p params) {
	l := p.newLocker(c)
	key := c.key("k")
	first := expire(c, p, l, key)
	// The key has expired and been released since: its storage may be gone.
	second := c.take(p.newLocker(c), key, p.long)
	if second.Token() <= first.Token() {
		c.Fatalf("Token() = %d after the earlier lease (token %d) expired, want it greater", second.Token(), first.Token())
	}
	c.release(second)
	third := c.take(l, key, p.long)
	if third.Token() <= second.Token() {
		c.Fatalf("Token() = %d after release of token %d, want it greater", third.Token(), second.Token())
	}
	c.release(third)
}

func testContextCancelled(c *check, p params) {
	l := p.newLocker(c)
	key := c.key("k")
	cancelled, cancel := context.WithCancel(c.ctx())
	cancel()
	// Only the calls with the cancelled context are timed: the take between
	// them is a real request, which a loaded machine may slow down.
	start := time.Now()
	if le, err := l.TryAcquire(cancelled, key, p.long); !errors.Is(err, context.Canceled) {
		if err == nil {
			_ = le.Release(c.ctx())
		}
		c.Fatalf("TryAcquire with a cancelled context: got %v, want an error matching context.Canceled", err)
	}
	took := time.Since(start)
	le := c.take(l, key, p.long) // the cancelled attempt must have taken nothing
	start = time.Now()
	if err := le.Refresh(cancelled, p.long); !errors.Is(err, context.Canceled) {
		c.Errorf("Refresh with a cancelled context: got %v, want an error matching context.Canceled", err)
	}
	if err := le.Release(cancelled); !errors.Is(err, context.Canceled) {
		c.Errorf("Release with a cancelled context: got %v, want an error matching context.Canceled", err)
	}
	if took += time.Since(start); took > SchedulingSlack+p.gran {
		c.Errorf("calls with a cancelled context took %v, want them to return at once", took)
	}
	c.release(le)
}

func testAcquireDeadline(c *check, p params) {
	holder, waiter := p.newLocker(c), p.newLocker(c)
	key := c.key("k")
	le := c.take(holder, key, p.long)
	wait := 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(c.ctx(), wait)
	defer cancel()
	start := time.Now()
	got, err := lock.Acquire(ctx, waiter, key, p.long)
	took := time.Since(start)
	if err == nil {
		_ = got.Release(c.ctx())
		c.Fatalf("Acquire of a held key returned a lease")
	}
	if !errors.Is(err, lock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		c.Errorf("Acquire at its deadline: got %v, want an error matching both ErrNotAcquired and context.DeadlineExceeded", err)
	}
	if took > wait+SchedulingSlack {
		c.Errorf("Acquire with a %v deadline returned after %v", wait, took)
	}
	// Cancellation in the middle of a wait.
	ctx2, cancel2 := context.WithCancel(c.ctx())
	done := make(chan error, 1)
	go func() {
		_, err := lock.Acquire(ctx2, waiter, key, p.long)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it start waiting; there is no event for that
	cancelled := time.Now()
	cancel2()
	err = <-done
	if !errors.Is(err, lock.ErrNotAcquired) || !errors.Is(err, context.Canceled) {
		c.Errorf("Acquire cancelled mid-wait: got %v, want ErrNotAcquired and context.Canceled", err)
	}
	if took := time.Since(cancelled); took > SchedulingSlack {
		c.Errorf("Acquire returned %v after its context was cancelled", took)
	}
	c.release(le)
}

// wakeBound is how soon after a release a blocked Acquire must hold the key:
// one polling interval at most, plus scheduling.
const wakeBound = lock.DefaultMaxBackoff + SchedulingSlack

func testAcquireWakesOnRelease(c *check, p params) {
	holder, waiter := p.newLocker(c), watch(p.newLocker(c))
	key := c.key("k")
	le := c.take(holder, key, p.long)
	got := make(chan error, 1)
	go func() {
		w, err := lock.Acquire(c.ctx(), waiter.locker(), key, p.long)
		if err == nil {
			err = w.Release(context.WithoutCancel(c.ctx()))
		}
		got <- err
	}()
	select {
	case <-waiter.waiting:
	case <-time.After(p.long / 2):
		c.Fatalf("the waiter did not start waiting within %v", p.long/2)
	}
	released := time.Now()
	c.release(le)
	select {
	case err := <-got:
		if err != nil {
			c.Fatalf("Acquire (and release) of a key that was then released: %v", err)
		}
		if d := waiter.late(released, wakeBound); d > 0 {
			c.Errorf("the waiter sent the attempt that took the key %v later than %v after the release (beyond the round trip of its attempt before)", d, wakeBound)
		}
	case <-time.After(p.long / 2):
		c.Fatalf("the waiter did not take the key within %v of its release", p.long/2)
	}
}

func testAcquireWaitsForExpiry(c *check, p params) {
	holder, waiter := p.newLocker(c), watch(p.newLocker(c))
	key := c.key("k")
	sent := time.Now()
	c.take(holder, key, p.short) // never released
	bound := p.expiryBound(p.short) + wakeBound
	ctx, cancel := context.WithTimeout(c.ctx(), 2*bound)
	defer cancel()
	le, err := lock.Acquire(ctx, waiter.locker(), key, p.long)
	if err != nil {
		c.Fatalf("Acquire of a key whose holder lets it expire (TTL %v): %v", p.short, err)
	}
	if d := waiter.late(sent, bound); d > 0 {
		c.Errorf("Acquire sent the attempt that took the key %v later than %v after the holder's take with TTL %v (beyond the round trip of its attempt before)", d, bound, p.short)
	}
	c.release(le)
}

func testNotifiedWaiting(c *check, p params) {
	holderL, waiterL := p.newLocker(c), p.newLocker(c)
	n, ok := waiterL.(lock.Notifier)
	if !ok {
		c.Skipf("optional capability: %T does not implement lock.Notifier; Acquire polls instead", waiterL)
	}
	key := c.key("k")
	const eventBound = 100*time.Millisecond + SchedulingSlack

	// A release that happens after Subscribe but before Wait is not missed.
	le := c.take(holderL, key, p.long)
	sub, err := n.Subscribe(c.ctx(), key)
	if err != nil {
		c.Fatalf("Subscribe: %v", err)
	}
	defer func() {
		if err := sub.Close(); err != nil {
			c.Errorf("Subscription.Close: %v", err)
		}
		if err := sub.Close(); err != nil {
			c.Errorf("second Subscription.Close: %v", err)
		}
	}()
	held := attempt(c, p, waiterL, key)
	c.release(le)
	ctx, cancel := context.WithTimeout(c.ctx(), p.long/2)
	defer cancel()
	start := time.Now()
	if err := sub.Wait(ctx, held); err != nil {
		c.Fatalf("Wait after a release that came between the failed attempt and Wait: %v (a missed wake-up)", err)
	}
	if d := time.Since(start); d > eventBound {
		c.Errorf("Wait for a release that had already happened took %v", d)
	}

	// A release while Wait blocks wakes it.
	le = c.take(holderL, key, p.long)
	held = attempt(c, p, waiterL, key)
	woke := make(chan error, 1)
	go func() { woke <- sub.Wait(ctx, held) }()
	time.Sleep(50 * time.Millisecond) // let Wait block; there is no event for that
	released := time.Now()
	c.release(le)
	if err := <-woke; err != nil {
		c.Fatalf("Wait while the holder released: %v", err)
	}
	if d := time.Since(released); d > eventBound {
		c.Errorf("Wait returned %v after the release, want within %v", d, eventBound)
	}

	// Wait honours its context.
	le = c.take(holderL, key, p.long)
	held = attempt(c, p, waiterL, key)
	short, cancelShort := context.WithTimeout(c.ctx(), 50*time.Millisecond)
	defer cancelShort()
	start = time.Now()
	err = sub.Wait(short, held)
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		c.Errorf("Wait at its context's deadline: got %v, want nil or context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 50*time.Millisecond+SchedulingSlack {
		c.Errorf("Wait with a 50ms deadline returned after %v", d)
	}
	c.release(le)
}

// attempt makes a failing TryAcquire on a held key and returns what it
// reported, as Acquire would pass it to Subscription.Wait.
func attempt(c *check, p params, l lock.Locker, key string) *lock.NotAcquiredError {
	c.Helper()
	_, err := l.TryAcquire(c.ctx(), key, p.long)
	if !errors.Is(err, lock.ErrNotAcquired) {
		c.Fatalf("TryAcquire of a held key: got %v, want ErrNotAcquired", err)
	}
	var held *lock.NotAcquiredError
	errors.As(err, &held)
	return held
}

func testKeepAliveHolds(c *check, p params) {
	l, other := p.newLocker(c), p.newLocker(c)
	key := c.key("k")
	ttl := p.keepAliveTTL()
	le := c.take(l, key, ttl)
	k, err := lock.KeepAlive(c.ctx(), le, ttl)
	if err != nil {
		c.Fatalf("KeepAlive: %v", err)
	}
	defer k.Stop()
	outlive := 2 * p.expiryBound(ttl)
	select {
	case <-k.Context().Done():
		c.Fatalf("KeepAlive lost a healthy lease: %v", context.Cause(k.Context()))
	case <-time.After(outlive):
	}
	c.refused(other, key, fmt.Sprintf("a kept-alive lease must outlive its TTL %v (checked after %v)", ttl, outlive))
	if err := k.Release(c.ctx()); err != nil {
		c.Fatalf("Keeper.Release: %v", err)
	}
	c.release(c.take(other, key, p.long))
}
