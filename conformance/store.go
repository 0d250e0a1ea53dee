package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/idempotency"
)

// StoreConfig describes an [idempotency.Store] under test. Zero values mean
// "default", as in [Config].
type StoreConfig struct {
	// NewStore returns an independent Store, as another process would have:
	// its own client and connections to the same server. It registers the
	// Store's clean-up with t.Cleanup.
	NewStore func(t *testing.T) idempotency.Store
	// TTLGranularity, MinTTL and ExpirySlack mean what they mean in
	// [Config]; they apply to lease TTLs and record retentions alike.
	TTLGranularity time.Duration
	MinTTL         time.Duration
	ExpirySlack    time.Duration
	// NewFaultyStore, when set, returns an independent Store as NewStore
	// does, together with the fault switch of its client (see [Faults]).
	// The clauses about lost replies and cancellation while a request is in
	// flight use it; without it they are skipped as an optional capability.
	NewFaultyStore func(t *testing.T) (idempotency.Store, Faults)
}

// storeSuite lists the Store clauses in the order RunStore runs them. The
// order and names are part of the package's API.
var storeSuite = []subtest[storeParams]{
	{"StoreInvalidInput", "bad input to Claim and Complete gets a typed error, never a panic", testStoreInvalidInput,
		"Claim does not call lock.CheckArgs first, or Complete accepts a lease of another type (check it with a type assertion, and a typed nil)"},
	{"ClaimTakes", "Claim on a free key returns a Lease and no record; a claimed key is refused with ErrNotAcquired", testClaimTakes,
		"Claim overwrites instead of create-if-absent"},
	{"ClaimOneWinner", "exactly one of many concurrent Claims wins", testClaimOneWinner,
		"Claim reads the record and then takes the lease in two requests"},
	{"CompleteStores", "after Complete every Claim, on any Store, returns the record byte for byte and no Lease", testCompleteStores,
		"the record is stored as text (it is binary) or truncated"},
	{"CompleteEndsLease", "Complete ends the lease: Refresh and Release then report ErrNotHeld and leave the record", testCompleteEndsLease,
		"Complete stores the record but leaves the lease's holding in place"},
	{"ReleaseFreesKey", "Release of a claimed lease frees the key and stores nothing; the next Claim gets a greater token", testReleaseFreesKey,
		"Release of a claimed lease leaves something behind that Claim reads as a record or a holding"},
	{"CompleteTwice", "a second Complete reports ErrNotHeld and keeps the first record", testCompleteTwice,
		"Complete does not compare the lease's own value before writing"},
	{"CompleteAfterRelease", "Complete after Release reports ErrNotHeld and stores nothing", testCompleteAfterRelease,
		"Complete does not compare the lease's own value before writing"},
	{"StaleCompleteOwnerChecked", "a Complete by an expired lease never overwrites or ends a newer owner", testStaleComplete,
		"Complete writes by key name instead of compare-and-swap on the lease's own value"},
	{"IndependentKeys", "Complete and Release on one key leave other keys alone", testStoreIndependentKeys,
		"records or holdings of different keys share a storage key"},
	{"RecordOutlivesLease", "a record is kept for its retention, not for the lease's TTL", testRecordOutlivesLease,
		"Complete keeps the lease's TTL on the record instead of setting the retention"},
	{"RecordRetention", "a record is replayed until its retention ends, and then the key is free with a greater token", testRecordRetention,
		"the record is stored without a server-side TTL"},
	{"KeepAliveClaim", "a claimed lease renewed by KeepAlive outlives its TTL and can still Complete", testKeepAliveClaim,
		"Refresh of a claimed lease does not extend the server's TTL"},
	{"OversizeRecordKeepsLease", "a record the Store cannot hold is refused with an error matching ErrRecordTooLarge (not ErrNotHeld), and the lease still holds", testOversizeRecord,
		"a refused write is reported as ErrNotHeld or as an untyped error (wrap lock.ErrRecordTooLarge), or the lease is deleted before the record is known to fit"},
	{"CompleteWakesSubscribers", "optional Notifier: Complete wakes subscribers of the key, as a release does", testCompleteWakes,
		"Complete publishes no event, so waiting duplicates sleep until the lease's TTL"},
	{"ClaimCompleteRace", "a Claim concurrent with Complete returns ErrNotAcquired or the record, never a Lease", testClaimCompleteRace,
		"the record and the lease are kept under separate keys and Complete writes one and then deletes the other; keep them under one key and replace the lease by the record in one compare-and-swap"},
	{"CancelInFlight", "optional fault hook: cancellation while a Claim or Complete is in flight is honoured promptly", testStoreCancelInFlight,
		"the client call does not get the caller's context, or waits for a reply without watching ctx.Done()"},
	{"UnknownOutcome", "optional fault hook: after a lost reply of Complete the lease reports ErrNotHeld and the record stands; a lost Claim holds the key no longer than its TTL", testStoreUnknownOutcome,
		"the lease keeps local state that a failed Complete does not invalidate; after an error whose outcome is unknown the next call must ask the server"},
	{"Ping", "optional lock.Pinger: Ping answers nil on a live Store and honours an ended context", testPing,
		"Ping is not sent with the caller's context, or reports success without asking the server"},
	{"TTLLimits", "optional lock.TTLLimiter: the limits are consistent, CheckTTL accepts them, and the shortest TTL they allow works", testTTLLimits,
		"TTLLimits reports a Min below what the server honours (the server then refuses a TTL that CheckTTL accepted), or a Max above it"},
	{"AdminInspect", "optional lock.Admin: Inspect reports a key's holder and record as the Store's callers see them", testAdminInspect,
		"Inspect builds the storage key differently from the lease (escaping or hashing), or reads the wrong field"},
	{"AdminForceRelease", "optional lock.Admin: ForceRelease ends the holding: the holder's next call reports ErrNotHeld, tokens keep increasing, records are left", testAdminForceRelease,
		"ForceRelease deletes the token counter with the lock, or builds the storage key differently from the lease, or reports success when nothing was held"},
	{"AdminDeleteRecord", "optional lock.Admin: DeleteRecord deletes a record only, and the next Claim takes the key with a greater token", testAdminDeleteRecord,
		"DeleteRecord deletes a holding too, or the token counter with the record"},
	{"ClaimFingerprint", "optional idempotency.FingerprintClaimer: the holder's fingerprint is stored with the lease in one step and returned to refused claims", testClaimFingerprint,
		"the fingerprint is written after the lease in a second request, so a Claim in between sees no fingerprint; or it is not cleared with the lease"},
	{"LossNotification", "optional lock.LossNotifier: Lost returns at once even while the server hangs, its channel stays open while the lease holds and closes soon after the key is forced out", testLossNotification,
		"the loss is found only by the next Refresh (the backend does not watch the key or session), or the watch is started inside Lost"},
}

// storeParams are the derived timings of one RunStore.
type storeParams struct {
	params
	cfg StoreConfig
}

func (p storeParams) newStore(c *check) idempotency.Store {
	c.Helper()
	s := p.cfg.NewStore(c.T)
	if s == nil {
		c.T.Fatal("conformance: NewStore returned nil")
	}
	return s
}

// RunStore runs the store contract of [idempotency.Store] (Claim and
// Complete, the atomic steps the idempotency helper is built on) against a
// backend, then checks that no goroutine was left behind. Like [Run], its
// subtests have stable names in a fixed order and every failure names the
// clause; only the clauses of optional capabilities (a Notifier, the fault
// hook, the contract's optional interfaces) may be skipped. A backend's
// Store also passes [Run] as a Locker; RunStore does not repeat it.
func RunStore(t *testing.T, cfg StoreConfig) {
	t.Helper()
	if cfg.NewStore == nil {
		t.Fatal("conformance: StoreConfig.NewStore is nil")
	}
	p := storeParams{cfg: cfg, params: newParams(t, Config{
		NewLocker:      func(t *testing.T) lock.Locker { return cfg.NewStore(t) },
		TTLGranularity: cfg.TTLGranularity,
		MinTTL:         cfg.MinTTL,
		ExpirySlack:    cfg.ExpirySlack,
	})}
	runSuite(t, "store/", storeSuite, p)
}

// newFaultyStore returns a Store whose client faults can be switched on,
// or skips the clause when the backend's test supplies none.
func (p storeParams) newFaultyStore(c *check) (idempotency.Store, Faults) {
	c.Helper()
	if p.cfg.NewFaultyStore == nil {
		c.Skip("optional capability: StoreConfig.NewFaultyStore is not set, so lost replies and stalled requests cannot be injected")
	}
	s, f := p.cfg.NewFaultyStore(c.T)
	if s == nil || f == nil {
		c.T.Fatal("conformance: NewFaultyStore returned a nil Store or Faults")
	}
	return s, f
}

// claim claims key on s, failing the clause unless it gets a Lease.
func (c *check) claim(s idempotency.Store, key string, ttl time.Duration) lock.Lease {
	c.Helper()
	le, rec, err := s.Claim(c.ctx(), key, ttl)
	if err != nil {
		c.Fatalf("Claim(%q, %v) on a free key: %v", key, ttl, err)
	}
	if le == nil || rec != nil {
		c.Fatalf("Claim(%q) on a free key: got Lease %v and a %d-byte record, want a Lease and no record", key, le, len(rec))
	}
	return le
}

// claimRefused asserts that Claim on key is refused as in progress.
func (c *check) claimRefused(s idempotency.Store, key, why string) {
	c.Helper()
	le, rec, err := s.Claim(c.ctx(), key, time.Minute)
	switch {
	case err == nil && le != nil:
		_ = le.Release(context.WithoutCancel(c.ctx()))
		c.Fatalf("%s: Claim(%q) took the key while another lease should hold it", why, key)
	case err == nil:
		c.Fatalf("%s: Claim(%q) returned a %d-byte record while the key should be in progress", why, key, len(rec))
	case !errors.Is(err, lock.ErrNotAcquired):
		c.Fatalf("%s: Claim(%q) of a claimed key: got %v, want an error matching ErrNotAcquired", why, key, err)
	}
}

// recordIs asserts that Claim on key returns want and no Lease.
func (c *check) recordIs(s idempotency.Store, key string, want []byte, why string) {
	c.Helper()
	le, rec, err := s.Claim(c.ctx(), key, time.Minute)
	if err != nil {
		c.Fatalf("%s: Claim(%q) of a completed key: %v", why, key, err)
	}
	if le != nil {
		_ = le.Release(context.WithoutCancel(c.ctx()))
		c.Fatalf("%s: Claim(%q) took a completed key instead of returning its record", why, key)
	}
	if !bytes.Equal(rec, want) {
		c.Fatalf("%s: Claim(%q) returned a record of %d bytes %.32q…, want %d bytes %.32q…", why, key, len(rec), rec, len(want), want)
	}
}

func (c *check) complete(s idempotency.Store, le lock.Lease, rec []byte, retention time.Duration) {
	c.Helper()
	if err := s.Complete(c.ctx(), le, rec, retention); err != nil {
		c.Fatalf("Complete of a held lease on %q: %v", le.Key(), err)
	}
}

func testStoreInvalidInput(c *check, p storeParams) {
	s := p.newStore(c)
	ctx := c.ctx()
	for _, key := range []string{"", string(make([]byte, lock.MaxKeyLen+1)), "bad\xffkey"} {
		le, rec, err := s.Claim(ctx, key, p.long)
		if !errors.Is(err, lock.ErrInvalidKey) || le != nil || rec != nil {
			c.Errorf("Claim with invalid key %.20q: got (%v, %d bytes, %v), want an error matching ErrInvalidKey", key, le, len(rec), err)
		}
	}
	key := c.key("k")
	for _, ttl := range []time.Duration{0, -time.Second} {
		if le, _, err := s.Claim(ctx, key, ttl); !errors.Is(err, lock.ErrInvalidTTL) || le != nil {
			c.Errorf("Claim with TTL %v: got (%v, %v), want an error matching ErrInvalidTTL", ttl, le, err)
		}
	}
	le := c.claim(s, key, p.long)
	for _, ret := range []time.Duration{0, -time.Second} {
		if err := s.Complete(ctx, le, []byte("r"), ret); err == nil {
			c.Fatalf("Complete with retention %v succeeded, want an error", ret)
		}
	}
	if err := s.Complete(ctx, nil, []byte("r"), p.long); err == nil {
		c.Errorf("Complete with a nil Lease succeeded, want an error")
	}
	c.claimRefused(p.newStore(c), key, "after Complete calls with bad arguments the lease must still hold")
	c.release(le)
}

func testClaimTakes(c *check, p storeParams) {
	s, other := p.newStore(c), p.newStore(c)
	key := c.key("k")
	le := c.claim(s, key, p.long)
	if le.Key() != key {
		c.Errorf("Lease.Key() = %q, want %q", le.Key(), key)
	}
	if le.Token() == 0 {
		c.Errorf("Lease.Token() = 0; tokens start above zero")
	}
	c.claimRefused(s, key, "the same Store")
	c.claimRefused(other, key, "another Store")
	c.release(le)
}

func testClaimOneWinner(c *check, p storeParams) {
	const stores = 4
	ss := make([]idempotency.Store, stores)
	for i := range ss {
		ss[i] = p.newStore(c)
	}
	oneWinner(c, "Claims", 4*stores, func(i int, key string) (lock.Lease, error) {
		le, rec, err := ss[i%stores].Claim(c.ctx(), key, p.long)
		if err == nil && le == nil {
			return nil, fmt.Errorf("a %d-byte record on a key never completed", len(rec))
		}
		return le, err
	})
}

// binaryRecord holds every byte value, so that no backend may treat records
// as text.
func binaryRecord(n int) []byte {
	b := make([]byte, n)
	const period = 1 << 16 // byte(i*7 + i/256) repeats every 65536 bytes
	for i := range min(n, period) {
		b[i] = byte(i*7 + i/256)
	}
	// The rest by copies: byte by byte, 8 MiB cost seconds under the race
	// detector on a loaded machine.
	for done := period; done < n; done *= 2 {
		copy(b[done:], b[:done])
	}
	return b
}

func testCompleteStores(c *check, p storeParams) {
	s, other := p.newStore(c), p.newStore(c)
	for _, size := range []int{1, 256, 64 << 10} {
		key := c.key(fmt.Sprint("size-", size))
		rec := binaryRecord(size)
		le := c.claim(s, key, p.long)
		c.complete(s, le, rec, p.long)
		c.recordIs(s, key, rec, "the same Store")
		c.recordIs(other, key, rec, "another Store")
		c.recordIs(other, key, rec, "a second Claim")
	}
}

func testCompleteEndsLease(c *check, p storeParams) {
	s := p.newStore(c)
	key := c.key("k")
	le := c.claim(s, key, p.long)
	rec := []byte("done")
	c.complete(s, le, rec, p.long)
	c.notHeld("Refresh after Complete", le.Refresh(c.ctx(), p.long))
	c.notHeld("Release after Complete", le.Release(c.ctx()))
	c.recordIs(p.newStore(c), key, rec, "after a stale Refresh and Release")
}

func testReleaseFreesKey(c *check, p storeParams) {
	s, other := p.newStore(c), p.newStore(c)
	key := c.key("k")
	le := c.claim(s, key, p.long)
	c.release(le)
	le2 := c.claim(other, key, p.long)
	if le2.Token() <= le.Token() {
		c.Errorf("token after Release %d, want greater than %d", le2.Token(), le.Token())
	}
	c.release(le2)
}

func testCompleteTwice(c *check, p storeParams) {
	s := p.newStore(c)
	key := c.key("k")
	le := c.claim(s, key, p.long)
	c.complete(s, le, []byte("first"), p.long)
	c.notHeld("second Complete", s.Complete(c.ctx(), le, []byte("second"), p.long))
	c.recordIs(p.newStore(c), key, []byte("first"), "after a second Complete")
}

func testCompleteAfterRelease(c *check, p storeParams) {
	s := p.newStore(c)
	key := c.key("k")
	le := c.claim(s, key, p.long)
	c.release(le)
	c.notHeld("Complete after Release", s.Complete(c.ctx(), le, []byte("late"), p.long))
	le2 := c.claim(p.newStore(c), key, p.long) // nothing was stored
	c.release(le2)
}

func testStaleComplete(c *check, p storeParams) {
	s, other, third := p.newStore(c), p.newStore(c), p.newStore(c)
	key := c.key("k")
	sent := time.Now()
	stale := c.claim(s, key, p.short)
	var fresh lock.Lease
	bound := p.expiryBound(p.short)
	c.pollUntil(sent.Add(bound), max(p.short/50, time.Millisecond), func() bool {
		le, rec, err := other.Claim(c.ctx(), key, p.long)
		switch {
		case err == nil && le == nil:
			c.Fatalf("Claim returned a %d-byte record for a key that was never completed", len(rec))
		case err != nil && !errors.Is(err, lock.ErrNotAcquired):
			c.Fatalf("Claim while waiting for expiry: %v", err)
		}
		fresh = le
		return err == nil
	}, "a claimed lease with TTL %v was still held more than %v later", p.short, bound)
	c.notHeld("Complete by the expired lease", s.Complete(c.ctx(), stale, []byte("stale"), p.long))
	c.claimRefused(third, key, "the newer owner must still hold the key after a stale Complete")
	c.complete(other, fresh, []byte("fresh"), p.long)
	c.recordIs(third, key, []byte("fresh"), "the newer owner's record")
}

func testStoreIndependentKeys(c *check, p storeParams) {
	s := p.newStore(c)
	a, b, d := c.key("a"), c.key("b"), c.key("d")
	la, lb, ld := c.claim(s, a, p.long), c.claim(s, b, p.long), c.claim(s, d, p.long)
	c.complete(s, la, []byte("A"), p.long)
	c.claimRefused(s, b, "completing another key must leave this one in progress")
	c.release(lb)
	c.claimRefused(s, d, "releasing another key must leave this one in progress")
	c.complete(s, ld, []byte("D"), p.long)
	c.recordIs(s, a, []byte("A"), "key a")
	c.recordIs(s, d, []byte("D"), "key d")
	le := c.claim(s, b, p.long)
	c.release(le)
}

func testRecordOutlivesLease(c *check, p storeParams) {
	s := p.newStore(c)
	key := c.key("k")
	sent := time.Now()
	le := c.claim(s, key, p.short)
	c.complete(s, le, []byte("kept"), p.long)
	time.Sleep(time.Until(sent.Add(p.expiryBound(p.short)))) // the clock is what is under test
	c.recordIs(p.newStore(c), key, []byte("kept"), fmt.Sprintf("a record with retention %v must outlive the lease's TTL %v", p.long, p.short))
}

func testRecordRetention(c *check, p storeParams) {
	s, other := p.newStore(c), p.newStore(c)
	key := c.key("k")
	le := c.claim(s, key, p.long)
	sent := time.Now()
	c.complete(s, le, []byte("short"), p.short)
	time.Sleep(time.Until(sent.Add(p.short / 2))) // the clock is what is under test
	if le2, rec, err := other.Claim(c.ctx(), key, p.long); err == nil && le2 != nil {
		_ = le2.Release(context.WithoutCancel(c.ctx()))
		if time.Now().Before(sent.Add(p.short)) {
			c.Fatalf("a record must be kept for its retention %v: Claim took the key at half of it", p.short)
		}
		c.Logf("inconclusive: the retention check at half of %v was answered after it ran out", p.short)
		return
	} else if err != nil || !bytes.Equal(rec, []byte("short")) {
		c.Fatalf("Claim at half of the retention %v: got (%q, %v), want the record", p.short, rec, err)
	}
	bound := p.expiryBound(p.short)
	var le2 lock.Lease
	c.pollUntil(sent.Add(bound), max(p.short/50, time.Millisecond), func() bool {
		got, rec, err := other.Claim(c.ctx(), key, p.long)
		if err != nil {
			c.Fatalf("Claim while waiting for the retention to end: %v", err)
		}
		if got == nil && !bytes.Equal(rec, []byte("short")) {
			c.Fatalf("Claim while waiting for the retention to end returned record %q, want %q or a Lease", rec, "short")
		}
		le2 = got
		return got != nil
	}, "a record with retention %v was still returned more than %v later", p.short, bound)
	if le2.Token() <= le.Token() {
		c.Errorf("token after the record expired %d, want greater than %d", le2.Token(), le.Token())
	}
	c.release(le2)
}

func testKeepAliveClaim(c *check, p storeParams) {
	s := p.newStore(c)
	key := c.key("k")
	ttl := p.keepAliveTTL()
	le := c.claim(s, key, ttl)
	k, err := lock.KeepAlive(c.ctx(), le, ttl)
	if err != nil {
		c.Fatalf("KeepAlive: %v", err)
	}
	time.Sleep(p.expiryBound(ttl)) // the clock is what is under test
	c.claimRefused(p.newStore(c), key, "KeepAlive must keep a claimed lease past its TTL")
	k.Stop()
	if err := k.Err(); !errors.Is(err, lock.ErrStopped) {
		c.Fatalf("KeepAlive ended with %v before Stop", err)
	}
	c.complete(s, le, []byte("kept alive"), p.long)
	c.recordIs(p.newStore(c), key, []byte("kept alive"), "after KeepAlive")
}

func testCompleteWakes(c *check, p storeParams) {
	s, waiter := p.newStore(c), p.newStore(c)
	n, ok := waiter.(lock.Notifier)
	if !ok {
		c.Skipf("optional capability: %T does not implement lock.Notifier; waiting duplicates poll instead", waiter)
	}
	key := c.key("k")
	const eventBound = 100*time.Millisecond + SchedulingSlack
	le := c.claim(s, key, p.long)
	sub, err := n.Subscribe(c.ctx(), key)
	if err != nil {
		c.Fatalf("Subscribe: %v", err)
	}
	defer func() { _ = sub.Close() }()
	_, _, err = waiter.Claim(c.ctx(), key, p.long)
	var held *lock.NotAcquiredError
	if !errors.As(err, &held) && !errors.Is(err, lock.ErrNotAcquired) {
		c.Fatalf("Claim of a claimed key: got %v, want ErrNotAcquired", err)
	}
	woke := make(chan error, 1)
	go func() { woke <- sub.Wait(c.ctx(), held) }()
	time.Sleep(50 * time.Millisecond) // let Wait block; there is no event for that
	completed := time.Now()
	c.complete(s, le, []byte("done"), p.long)
	select {
	case err := <-woke:
		if err != nil {
			c.Fatalf("Wait while the holder completed: %v", err)
		}
	case <-time.After(p.long / 2):
		c.Fatalf("Wait did not return %v after Complete", p.long/2)
	}
	if d := time.Since(completed); d > eventBound {
		c.Errorf("Wait returned %v after Complete, want within %v", d, eventBound)
	}
	c.recordIs(waiter, key, []byte("done"), "after the wake-up")
}

// oversize is larger than any backend's record limit by default (memcached
// items and etcd requests stop near 1 MiB, Consul transactions at 512 KiB).
const oversize = 8 << 20

// oversizeRounds is how many times testOversizeRecord tries, each time with
// twice the lease's TTL, while the machine stalls past the lease's TTL.
const oversizeRounds = 3

// testOversizeRecord claims a key and completes it with an 8 MiB record.
// Moving 8 MiB through a Store under the race detector on a loaded
// machine has taken longer than p.long (30-35 s): an answer that says the
// lease is gone, when it came back after the lease's TTL could have run
// out, proves nothing (as in refusedBefore), and the clause tries again
// with a fresh key and twice the TTL.
func testOversizeRecord(c *check, p storeParams) {
	big := binaryRecord(oversize) // before any claim: not out of a lease
	ttl := p.long
	for round := 1; ; round++ {
		msg, late := oversizeRound(c, p, c.key(fmt.Sprint("k", round)), big, ttl)
		switch {
		case msg == "":
			return
		case !late:
			c.Fatalf("%s", msg)
		case round == oversizeRounds:
			c.Fatalf("%s; in each of %d rounds the answer came back after the lease's TTL (the last was %v) could have run out", msg, round, ttl)
		}
		c.Logf("inconclusive: %s, but the answer came back after the lease's TTL of %v could have run out (the machine stalled); again with twice the TTL", msg, ttl)
		ttl *= 2
	}
}

// oversizeRound is one round of testOversizeRecord on key, with a lease of
// ttl. It fails the clause itself for what time cannot explain; otherwise
// it returns what went wrong, if anything, and whether the answer that
// showed it came back after the lease's TTL could have run out.
func oversizeRound(c *check, p storeParams, key string, big []byte, ttl time.Duration) (msg string, late bool) {
	c.Helper()
	s := p.newStore(c)
	claimed := time.Now()
	le := c.claim(s, key, ttl)
	expired := func() bool { return time.Since(claimed) >= ttl }
	err := s.Complete(c.ctx(), le, big, p.long)
	if err == nil {
		c.recordIs(p.newStore(c), key, big, "a Store that accepts an 8 MiB record must return it whole")
		return "", false
	}
	if errors.Is(err, lock.ErrNotHeld) || !errors.Is(err, lock.ErrRecordTooLarge) {
		return fmt.Sprintf("Complete of an 8 MiB record by a live lease: %v; a refusal for size must match lock.ErrRecordTooLarge and not claim the lease was lost", err),
			errors.Is(err, lock.ErrNotHeld) && expired()
	}
	// The idempotency helper then stores a small tombstone with the same
	// lease, so that the work is never run again.
	got, rec, err := p.newStore(c).Claim(c.ctx(), key, time.Minute)
	if got != nil {
		_ = got.Release(context.WithoutCancel(c.ctx()))
	}
	if !errors.Is(err, lock.ErrNotAcquired) {
		return fmt.Sprintf("after a refused record the lease must still hold: Claim(%q) of the claimed key: got a Lease %t, a %d-byte record and error %v, want an error matching ErrNotAcquired", key, got != nil, len(rec), err),
			got != nil && expired()
	}
	if err := s.Complete(c.ctx(), le, []byte("tombstone"), p.long); err != nil {
		return fmt.Sprintf("Complete of a small record after a refused one, by a lease that still holds: %v", err),
			errors.Is(err, lock.ErrNotHeld) && expired()
	}
	c.recordIs(p.newStore(c), key, []byte("tombstone"), "the record stored after a refused one")
	return "", false
}
