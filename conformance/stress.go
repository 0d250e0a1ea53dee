package conformance

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock"
)

// holding is one lease's time in the critical section, as its holder saw it
// on the local monotonic clock.
type holding struct {
	token      uint64
	start, end time.Time
}

// checkHistory verifies that holdings ordered by token never overlap and
// that tokens are unique and strictly increase with time. It returns a
// description of the first violation, or "".
func checkHistory(hist []holding) string {
	sorted := slices.Clone(hist)
	slices.SortFunc(sorted, func(a, b holding) int { return a.start.Compare(b.start) })
	for i := 1; i < len(sorted); i++ {
		prev, cur := sorted[i-1], sorted[i]
		if cur.start.Before(prev.end) {
			return "two leases (tokens " + u64(prev.token) + " and " + u64(cur.token) + ") were in the critical section at the same time"
		}
		if cur.token <= prev.token {
			return "token " + u64(cur.token) + " was handed out after token " + u64(prev.token)
		}
	}
	return ""
}

func testMutualExclusion(c *check, p params) {
	const lockers, perLocker, rounds = 4, 2, 6
	key := c.key("k")
	ls := make([]lock.Locker, lockers)
	for i := range ls {
		ls[i] = p.newLocker(c)
	}
	var (
		counter atomic.Int64 // read-modify-written without atomicity: only the lock protects it
		mu      sync.Mutex
		hist    []holding
		errs    []error
		wg      sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(c.ctx(), p.long)
	defer cancel()
	for i := range lockers * perLocker {
		l := ls[i%lockers]
		wg.Go(func() {
			for range rounds {
				le, err := lock.Acquire(ctx, l, key, p.long)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				start := time.Now()
				v := counter.Load()
				runtime.Gosched()
				time.Sleep(100 * time.Microsecond) // hold briefly, inviting a second holder
				counter.Store(v + 1)
				end := time.Now()
				rerr := le.Release(context.WithoutCancel(ctx))
				mu.Lock()
				hist = append(hist, holding{le.Token(), start, end})
				if rerr != nil {
					errs = append(errs, rerr)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		c.Fatalf("under stress: %v", errs[0])
	}
	if got, want := counter.Load(), int64(lockers*perLocker*rounds); got != want {
		c.Errorf("a counter incremented under the lock %d times reads %d: updates were lost to concurrent holders", want, got)
	}
	if msg := checkHistory(hist); msg != "" {
		c.Errorf("%s", msg)
	}
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }
