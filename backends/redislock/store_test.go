package redislock_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
)

// TestCompleteAtomic races Claims against a Complete: since storing the
// record and ending the lease are one script, a Claim sees either the lease
// (ErrNotAcquired) or the record, never a free key in between.
func TestCompleteAtomic(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			prefix := tp.testPrefix(t)
			owner := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
			rival := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
			ctx := t.Context()
			for round := range 20 {
				key := "k" + itoa(uint64(round))
				le, _, err := owner.Claim(ctx, key, time.Minute)
				if err != nil || le == nil {
					t.Fatalf("Claim: (%v, %v)", le, err)
				}
				var (
					wg    sync.WaitGroup
					stop  = make(chan struct{})
					mu    sync.Mutex
					stole []lock.Lease
					errs  []error
				)
				for range 4 {
					wg.Go(func() {
						for {
							l2, rec, err := rival.Claim(ctx, key, time.Minute)
							mu.Lock()
							switch {
							case l2 != nil:
								stole = append(stole, l2)
							case err != nil && !errors.Is(err, lock.ErrNotAcquired):
								errs = append(errs, err)
							}
							mu.Unlock()
							if rec != nil || l2 != nil || err != nil && !errors.Is(err, lock.ErrNotAcquired) {
								return
							}
							select {
							case <-stop:
								return
							default:
							}
						}
					})
				}
				if err := owner.Complete(ctx, le, []byte("done"), time.Minute); err != nil {
					t.Fatalf("Complete: %v", err)
				}
				time.AfterFunc(100*time.Millisecond, func() { close(stop) })
				wg.Wait()
				if len(errs) > 0 {
					t.Fatalf("a racing Claim failed: %v", errs[0])
				}
				if len(stole) > 0 {
					t.Fatalf("round %d: a Claim racing a Complete took the key instead of seeing the record", round)
				}
			}
		})
	}
}

func TestRecords(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			prefix := tp.testPrefix(t)
			c := tp.client(t, "")
			l := locker(t, c, redislock.WithPrefix(prefix), redislock.WithMaxRecordSize(10))
			ctx := t.Context()

			// An empty record is a record, not "none".
			le, _, err := l.Claim(ctx, "empty", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Complete(ctx, le, nil, time.Minute); err != nil {
				t.Fatal(err)
			}
			if le2, rec, err := l.Claim(ctx, "empty", time.Minute); err != nil || le2 != nil || rec == nil || len(rec) != 0 {
				t.Fatalf("Claim of a key completed with an empty record = (%v, %v, %v), want an empty non-nil record", le2, rec, err)
			}

			// Over the limit: refused, nothing stored, the lease still held.
			le, _, err = l.Claim(ctx, "big", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			err = l.Complete(ctx, le, make([]byte, 11), time.Minute)
			if !errors.Is(err, redislock.ErrRecordTooLarge) || !errors.Is(err, lock.ErrInvalidArgument) {
				t.Fatalf("Complete with an 11-byte record over a 10-byte limit: %v, want ErrRecordTooLarge", err)
			}
			if err := le.Refresh(ctx, time.Minute); err != nil {
				t.Fatalf("the lease must still hold after a refused Complete: %v", err)
			}

			// Retention is the server's PX on the record.
			if err := l.Complete(ctx, le, make([]byte, 10), 90*time.Second); err != nil {
				t.Fatal(err)
			}
			pttl, err := c.PTTL(ctx, prefix+"{big}:r").Result()
			if err != nil || pttl > 90*time.Second || pttl < 80*time.Second {
				t.Fatalf("PTTL of the record = %v (%v), want just under the 90s retention", pttl, err)
			}
		})
	}
}
