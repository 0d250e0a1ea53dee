package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/idempotency"
)

// The clauses of the contract's optional interfaces: lock.Pinger,
// lock.TTLLimiter, lock.Admin and idempotency.FingerprintClaimer. A Store
// that does not implement one, or whose Ping or Inspect answers an error
// matching errors.ErrUnsupported (a toolkit such as kvlock on a store that
// lacks the capability), skips its clauses as an optional capability.

// adminKeys are the keys the Admin clauses use: a plain one and a few that
// a backend escapes or hashes, so that an Admin that builds the storage key
// differently from the lease finds nothing.
var adminKeys = []string{"k", "a b/%20{tag}*é", "\x00\n?#"}

func testPing(c *check, p storeParams) {
	s := p.newStore(c)
	pg, ok := s.(lock.Pinger)
	if !ok {
		c.Skip("optional capability: the Store is not a lock.Pinger")
	}
	ctx, cancel := context.WithTimeout(c.ctx(), p.long)
	defer cancel()
	switch err := pg.Ping(ctx); {
	case errors.Is(err, errors.ErrUnsupported):
		c.Skipf("optional capability: the Store's Ping is unsupported here: %v", err)
	case err != nil:
		c.Fatalf("Ping of a live Store: %v", err)
	}
	if err := lock.Ping(ctx, s); err != nil {
		c.Fatalf("lock.Ping of a live Store: %v", err)
	}
	ended, stop := context.WithCancel(c.ctx())
	stop()
	if err := pg.Ping(ended); !errors.Is(err, context.Canceled) {
		c.Fatalf("Ping with a cancelled context: got %v, want an error matching context.Canceled", err)
	}
}

func testTTLLimits(c *check, p storeParams) {
	s := p.newStore(c)
	tl, ok := s.(lock.TTLLimiter)
	if !ok {
		c.Skip("optional capability: the Store is not a lock.TTLLimiter")
	}
	lim := tl.TTLLimits()
	if lim.Min < 0 || lim.Max < 0 || lim.Step < 0 || (lim.Max > 0 && lim.Min > lim.Max) || (lim.Max > 0 && lim.Step > lim.Max) {
		c.Fatalf("TTLLimits() = %+v: negative, or Min or Step above Max", lim)
	}
	for _, ttl := range []time.Duration{lim.Min, lim.Max, p.long} {
		if ttl <= 0 || (lim.Max > 0 && ttl > lim.Max) {
			continue
		}
		if err := lock.CheckTTL(s, ttl); err != nil {
			c.Errorf("CheckTTL(%v) with limits %+v: %v, want nil", ttl, lim, err)
		}
	}
	if lim.Max > 0 {
		err := lock.CheckTTL(s, lim.Max+max(lim.Step, time.Nanosecond))
		var te *lock.TTLError
		if !errors.Is(err, lock.ErrInvalidTTL) || !errors.As(err, &te) {
			c.Errorf("CheckTTL above Max %v: got %v, want a *lock.TTLError matching ErrInvalidTTL", lim.Max, err)
		}
	}
	// The shortest TTL the limits allow must work: taken, held, refused to
	// others.
	ttl := max(lim.Min, p.short)
	if lim.Step > 0 {
		ttl = roundUp(ttl, lim.Step)
	}
	key, other := c.key("min"), p.newStore(c)
	sent := time.Now()
	le := c.claim(s, key, ttl)
	c.refusedBefore(other, key, sent.Add(ttl), "a key claimed with the shortest TTL the limits allow")
	_ = le.Release(c.ctx()) // it may have run out

	if lim.Min <= lim.Step || lim.Min <= time.Nanosecond {
		return
	}
	below := lim.Min - max(lim.Step, time.Nanosecond)
	err := lock.CheckTTL(s, below)
	var te *lock.TTLError
	if !errors.Is(err, lock.ErrInvalidTTL) || !errors.As(err, &te) {
		c.Fatalf("CheckTTL(%v) below Min %v: got %v, want a *lock.TTLError matching ErrInvalidTTL", below, lim.Min, err)
	}
	// A TTL below Min is refused with ErrInvalidTTL, or lengthened by the
	// server (as the backend documents); any other error is a wrong Min.
	le, _, err = s.Claim(c.ctx(), c.key("below"), below)
	switch {
	case err == nil:
		c.release(le)
	case !errors.Is(err, lock.ErrInvalidTTL):
		c.Fatalf("Claim with TTL %v below Min %v: got %v, want success (the server lengthens it) or an error matching ErrInvalidTTL", below, lim.Min, err)
	}
}

// admin returns s as a lock.Admin, or skips the clause.
func admin(c *check, s idempotency.Store) lock.Admin {
	c.Helper()
	a, ok := s.(lock.Admin)
	if !ok {
		c.Skip("optional capability: the Store is not a lock.Admin")
	}
	if _, err := a.Inspect(c.ctx(), c.key("probe")); errors.Is(err, errors.ErrUnsupported) {
		c.Skipf("optional capability: the Store's lock.Admin is unsupported here: %v", err)
	}
	return a
}

func (c *check) inspect(a lock.Admin, key string) lock.KeyInfo {
	c.Helper()
	info, err := a.Inspect(c.ctx(), key)
	if err != nil {
		c.Fatalf("Inspect(%q): %v", key, err)
	}
	if info.Key != key {
		c.Errorf("Inspect(%q).Key = %q, want the key as passed", key, info.Key)
	}
	return info
}

func testAdminInspect(c *check, p storeParams) {
	s := p.newStore(c)
	a := admin(c, p.newStore(c))
	for i, k := range adminKeys {
		key := c.key(k)
		if info := c.inspect(a, key); info.Held || info.Record {
			c.Fatalf("Inspect of a key never used: %+v, want neither held nor a record", info)
		}
		ttl := p.long + time.Duration(i)*p.gran
		le := c.claim(s, key, ttl)
		info := c.inspect(a, key)
		if !info.Held || info.Record {
			c.Fatalf("Inspect of a claimed key: %+v, want held and no record", info)
		}
		if info.Token != 0 && info.Token != le.Token() {
			c.Errorf("Inspect(%q).Token = %d, want the holder's token %d", key, info.Token, le.Token())
		}
		if info.Remaining < 0 || info.Remaining > ttl+p.slack {
			c.Errorf("Inspect(%q).Remaining = %v, want between 0 and the TTL %v", key, info.Remaining, ttl)
		}
		rec := binaryRecord(100 + i)
		c.complete(s, le, rec, p.long)
		info = c.inspect(a, key)
		if info.Held || !info.Record {
			c.Fatalf("Inspect of a completed key: %+v, want a record and not held", info)
		}
		if info.RecordSize != 0 && info.RecordSize != len(rec) {
			c.Errorf("Inspect(%q).RecordSize = %d, want %d", key, info.RecordSize, len(rec))
		}
		if info.RecordRemaining < 0 || info.RecordRemaining > p.long+p.slack {
			c.Errorf("Inspect(%q).RecordRemaining = %v, want between 0 and the retention %v", key, info.RecordRemaining, p.long)
		}
	}
}

func testAdminForceRelease(c *check, p storeParams) {
	s, other := p.newStore(c), p.newStore(c)
	a := admin(c, p.newStore(c))
	for _, k := range adminKeys {
		key := c.key(k)
		c.notHeld("ForceRelease of a free key", a.ForceRelease(c.ctx(), key))
		// A Claim's lease: its Refresh, Release and Complete all fail.
		le := c.claim(s, key, p.long)
		if err := a.ForceRelease(c.ctx(), key); err != nil {
			c.Fatalf("ForceRelease(%q) of a claimed key: %v", key, err)
		}
		c.notHeld("the holder's Refresh after ForceRelease", le.Refresh(c.ctx(), p.long))
		c.notHeld("the holder's Complete after ForceRelease", s.Complete(c.ctx(), le, []byte("late"), p.long))
		c.notHeld("the holder's Release after ForceRelease", le.Release(c.ctx()))
		le2 := c.claim(other, key, p.long) // nothing was stored by the stale Complete
		if le2.Token() <= le.Token() {
			c.Fatalf("token after ForceRelease %d, want greater than the forced-out holder's %d", le2.Token(), le.Token())
		}
		// A TryAcquire lease, forced out while the next holder waits.
		if err := a.ForceRelease(c.ctx(), key); err != nil {
			c.Fatalf("second ForceRelease(%q): %v", key, err)
		}
		c.notHeld("Release after the second ForceRelease", le2.Release(c.ctx()))
		le3 := c.take(s, key, p.long)
		if le3.Token() <= le2.Token() {
			c.Fatalf("token after the second ForceRelease %d, want greater than %d", le3.Token(), le2.Token())
		}
		c.release(le3)
		c.notHeld("ForceRelease of a released key", a.ForceRelease(c.ctx(), key))
		// A record is not a lease: ForceRelease leaves it.
		le4 := c.claim(s, key, p.long)
		c.complete(s, le4, []byte("kept"), p.long)
		c.notHeld("ForceRelease of a completed key", a.ForceRelease(c.ctx(), key))
		c.recordIs(other, key, []byte("kept"), "after ForceRelease of a completed key")
	}
}

func testAdminDeleteRecord(c *check, p storeParams) {
	s, other := p.newStore(c), p.newStore(c)
	a := admin(c, p.newStore(c))
	for _, k := range adminKeys {
		key := c.key(k)
		c.notHeld("DeleteRecord of a free key", a.DeleteRecord(c.ctx(), key))
		le := c.claim(s, key, p.long)
		c.notHeld("DeleteRecord of a claimed key", a.DeleteRecord(c.ctx(), key))
		c.claimRefused(other, key, "DeleteRecord must leave a lease in place")
		c.complete(s, le, []byte("first"), p.long)
		if err := a.DeleteRecord(c.ctx(), key); err != nil {
			c.Fatalf("DeleteRecord(%q) of a completed key: %v", key, err)
		}
		le2 := c.claim(other, key, p.long)
		if le2.Token() <= le.Token() {
			c.Errorf("token after DeleteRecord %d, want greater than %d", le2.Token(), le.Token())
		}
		c.complete(other, le2, []byte("second"), p.long)
		c.recordIs(s, key, []byte("second"), "the record stored after DeleteRecord")
		c.notHeld("DeleteRecord of the deleted record's lease", s.Complete(c.ctx(), le, []byte("late"), p.long))
	}
}

// fingerprinter returns s as an idempotency.FingerprintClaimer, or skips.
func fingerprinter(c *check, s idempotency.Store) idempotency.FingerprintClaimer {
	c.Helper()
	f, ok := s.(idempotency.FingerprintClaimer)
	if !ok {
		c.Skip("optional capability: the Store is not an idempotency.FingerprintClaimer")
	}
	return f
}

func testClaimFingerprint(c *check, p storeParams) {
	s, other := p.newStore(c), p.newStore(c)
	f, fo := fingerprinter(c, s), fingerprinter(c, other)
	ctx := c.ctx()
	key := c.key("k")
	fp := binaryRecord(64)
	le, rec, holder, err := f.ClaimFingerprint(ctx, key, p.long, fp)
	if err != nil || le == nil || rec != nil || holder != nil {
		c.Fatalf("ClaimFingerprint of a free key: got (%v, %d-byte record, holder %x, %v), want a Lease only", le, len(rec), holder, err)
	}
	_, _, holder, err = fo.ClaimFingerprint(ctx, key, p.long, []byte("other"))
	if !errors.Is(err, lock.ErrNotAcquired) || !bytes.Equal(holder, fp) {
		c.Fatalf("ClaimFingerprint of a key claimed with fingerprint %x: got holder %x, %v; want the holder's fingerprint and ErrNotAcquired", fp, holder, err)
	}
	c.claimRefused(other, key, "a plain Claim of a key claimed with a fingerprint")
	c.complete(s, le, []byte("rec"), p.long)
	le2, rec, holder, err := fo.ClaimFingerprint(ctx, key, p.long, []byte("other"))
	if err != nil || le2 != nil || !bytes.Equal(rec, []byte("rec")) || holder != nil {
		c.Fatalf("ClaimFingerprint of a completed key: got (%v, record %q, holder %x, %v), want the record only", le2, rec, holder, err)
	}
	// A holder that claimed without a fingerprint is reported as nil.
	key2 := c.key("plain")
	le3 := c.claim(s, key2, p.long)
	if _, _, holder, err := fo.ClaimFingerprint(ctx, key2, p.long, fp); !errors.Is(err, lock.ErrNotAcquired) || holder != nil {
		c.Fatalf("ClaimFingerprint of a key claimed without a fingerprint: got holder %x, %v; want nil and ErrNotAcquired", holder, err)
	}
	c.release(le3)
	// Bad fingerprints are refused with a typed error and take nothing.
	key3 := c.key("bad")
	if le, _, _, err := f.ClaimFingerprint(ctx, key3, p.long, make([]byte, 65)); !errors.Is(err, lock.ErrInvalidArgument) || le != nil {
		c.Fatalf("ClaimFingerprint with a 65-byte fingerprint: got (%v, %v), want an error matching ErrInvalidArgument", le, err)
	}
	c.release(c.claim(other, key3, p.long))
	// The fingerprint is stored with the lease in one step: every loser of
	// a race sees the winner's.
	const claimers = 8
	stores := make([]idempotency.FingerprintClaimer, claimers)
	for i := range stores {
		stores[i] = fingerprinter(c, p.newStore(c))
	}
	for round := range p.rounds(40, 10) {
		key := c.key(fmt.Sprint("race-", round))
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winner  []byte
			won     lock.Lease
			wins    int
			holders [][]byte
			errs    []error
		)
		for i, st := range stores {
			wg.Go(func() {
				mine := []byte(fmt.Sprint("fp-", round, "-", i))
				le, _, holder, err := st.ClaimFingerprint(ctx, key, p.long, mine)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && le != nil:
					wins++
					winner, won = mine, le
				case errors.Is(err, lock.ErrNotAcquired):
					holders = append(holders, holder)
				default:
					errs = append(errs, fmt.Errorf("lease %v: %w", le, err))
				}
			})
		}
		wg.Wait()
		if len(errs) > 0 || wins != 1 {
			if won != nil {
				_ = won.Release(context.WithoutCancel(ctx))
			}
			c.Fatalf("round %d: %d of %d concurrent ClaimFingerprints won (errors %v), want exactly one", round, wins, claimers, errs)
		}
		c.release(won)
		for _, h := range holders {
			if !bytes.Equal(h, winner) {
				c.Fatalf("round %d: a loser saw holder fingerprint %q, want the winner's %q", round, h, winner)
			}
		}
	}
}
