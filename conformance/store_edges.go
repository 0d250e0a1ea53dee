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

// claimer makes Claim a taker, for keys that were never completed.
func claimer(s idempotency.Store) taker {
	return func(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
		le, rec, err := s.Claim(ctx, key, ttl)
		if err == nil && le == nil {
			return nil, fmt.Errorf("Claim(%q) returned a %d-byte record for a key that was never completed", key, len(rec))
		}
		return le, err
	}
}

// testClaimCompleteRace completes a claimed key while three other Stores
// Claim it in a loop, in 4 lanes of fresh keys for 2 s (0.5 s with -short).
// Every Claim must see the key in progress (ErrNotAcquired) or the record;
// one that gets a Lease would run the work a second time.
func testClaimCompleteRace(c *check, p storeParams) {
	const lanes, claimers = 4, 3
	owners := make([]idempotency.Store, lanes)
	others := make([][]idempotency.Store, lanes)
	for i := range lanes {
		owners[i] = p.newStore(c)
		for range claimers {
			others[i] = append(others[i], p.newStore(c))
		}
	}
	ctx := c.ctx()
	rounds := c.lanes(lanes, 2, p.budget(2*time.Second), func(lane, i int) *violation {
		key := c.key(fmt.Sprintf("lane-%d/round-%d", lane, i))
		rec := []byte(fmt.Sprintf("record of round %d", i))
		le, got, err := owners[lane].Claim(ctx, key, p.long)
		if err != nil || le == nil {
			return violated("Claim(%q) on a free key: got (%v, %d bytes, %v), want a Lease", key, le, len(got), err)
		}
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			first *violation
		)
		fail := func(v *violation) {
			mu.Lock()
			defer mu.Unlock()
			if first == nil {
				first = v
			}
		}
		start := make(chan struct{}, claimers)
		done := make(chan struct{})
		for _, s := range others[lane] {
			wg.Go(func() {
				started := false
				defer func() {
					if !started {
						start <- struct{}{}
					}
				}()
				for {
					dup, r, err := s.Claim(ctx, key, p.long)
					switch {
					case err == nil && dup != nil:
						_ = dup.Release(context.WithoutCancel(ctx))
						fail(violated("a Claim concurrent with Complete took the key: the work would run twice"))
						return
					case err == nil:
						if !bytes.Equal(r, rec) {
							fail(violated("a Claim concurrent with Complete returned record %q, want %q", r, rec))
						}
						return
					case !errors.Is(err, lock.ErrNotAcquired):
						fail(violated("a Claim concurrent with Complete: %v", err))
						return
					}
					if !started {
						started = true
						start <- struct{}{} // this claimer has seen the key in progress
					}
					select {
					case <-done:
						// Complete returned: the record must be there at the
						// next Claim.
						if dup, r, err := s.Claim(ctx, key, p.long); err != nil || dup != nil || !bytes.Equal(r, rec) {
							if dup != nil {
								_ = dup.Release(context.WithoutCancel(ctx))
							}
							fail(violated("Claim after Complete returned: got (%v, %q, %v), want the record", dup, r, err))
						}
						return
					default:
					}
				}
			})
		}
		for range claimers {
			<-start
		}
		err = owners[lane].Complete(ctx, le, rec, p.long)
		close(done)
		wg.Wait()
		if err != nil {
			return violated("Complete of a held lease on %q while others Claim it: %v", key, err)
		}
		return first
	})
	c.Logf("%d rounds of Complete against 3 claimers", rounds)
}

// testStoreCancelInFlight stalls the request of a Claim and of a Complete
// and ends each call's context while it waits: each must return promptly
// with the context's error. A Claim that may have been applied holds the
// key no longer than its TTL; a Complete retried after the stalled one
// answers nil or ErrNotHeld, and the record is stored.
func testStoreCancelInFlight(c *check, p storeParams) {
	s, f := p.newFaultyStore(c)
	other := p.newStore(c)

	c.stalledTake(p.params, "Claim", f, claimer(s), other, c.key("claim"))

	k2 := c.key("complete")
	le := c.claim(s, k2, p.long)
	rec := []byte("completed once")
	f.StallNextRequest()
	c.midFlight("Complete", true, func(ctx context.Context) error { return s.Complete(ctx, le, rec, p.long) })
	c.disarm(f)
	if err := s.Complete(c.ctx(), le, rec, p.long); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		c.Fatalf("Complete retried after a Complete that was cancelled mid-flight: %v, want nil or ErrNotHeld", err)
	}
	c.recordIs(other, k2, rec, "after a Complete retried once its first attempt was cancelled mid-flight")
}

// testStoreUnknownOutcome loses the reply of a Complete and of a Claim after
// the server applied them. After the lost Complete the lease reports
// ErrNotHeld, a retried Complete answers nil or ErrNotHeld, and the record
// stands; the lost Claim holds the key no longer than its TTL.
func testStoreUnknownOutcome(c *check, p storeParams) {
	s, f := p.newFaultyStore(c)
	other, third := p.newStore(c), p.newStore(c)
	ctx := c.ctx()

	k1 := c.key("completed")
	le := c.claim(s, k1, p.long)
	rec := []byte("completed once")
	f.LoseNextReply()
	c.lostReply("Complete", s.Complete(ctx, le, rec, p.long))
	c.notHeld("Refresh after a Complete whose reply was lost", le.Refresh(ctx, p.long))
	if err := s.Complete(ctx, le, rec, p.long); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		c.Fatalf("Complete retried after a Complete whose reply was lost: %v, want nil or ErrNotHeld", err)
	}
	if err := le.Release(ctx); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		c.Fatalf("Release after a Complete whose reply was lost: %v, want nil or ErrNotHeld", err)
	}
	c.recordIs(other, k1, rec, "after a Complete whose reply was lost")

	c.lostTake(p.params, "Claim", f, claimer(s), other, third, c.key("lost-claim"))
}
