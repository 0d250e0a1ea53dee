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

// recorder collects, from goroutines that take turns on one key, each
// holding and the errors that ended their turns.
type recorder struct {
	mu   sync.Mutex
	hist []holding
	errs []error
}

// fail records an error that ended a goroutine's turns.
func (r *recorder) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

// held records le's holding from start to end and its Release's error.
func (r *recorder) held(le lock.Lease, start, end time.Time, releaseErr error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hist = append(r.hist, holding{le.Token(), start, end})
	if releaseErr != nil {
		r.errs = append(r.errs, releaseErr)
	}
}

// err returns the first error recorded, or nil.
func (r *recorder) err() error {
	if len(r.errs) > 0 {
		return r.errs[0]
	}
	return nil
}

// historyFault is the first violation checkHistory found between two
// holdings adjacent in time.
type historyFault struct {
	overlap   bool // else: the later holding has the smaller token
	prev, cur holding
}

func (f *historyFault) String() string {
	if f.overlap {
		return "two leases (tokens " + u64(f.prev.token) + " and " + u64(f.cur.token) + ") were in the critical section at the same time"
	}
	return "token " + u64(f.cur.token) + " was handed out after token " + u64(f.prev.token)
}

// checkHistory sorts holdings by their start and verifies that they never
// overlap and that their tokens strictly increase. It returns the first
// violation, or nil.
func checkHistory(hist []holding) *historyFault {
	slices.SortFunc(hist, func(a, b holding) int { return a.start.Compare(b.start) })
	for i := 1; i < len(hist); i++ {
		prev, cur := hist[i-1], hist[i]
		if cur.start.Before(prev.end) {
			return &historyFault{true, prev, cur}
		}
		if cur.token <= prev.token {
			return &historyFault{false, prev, cur}
		}
	}
	return nil
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
		rec     recorder
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
					rec.fail(err)
					return
				}
				start := time.Now()
				v := counter.Load()
				runtime.Gosched()
				time.Sleep(100 * time.Microsecond) // hold briefly, inviting a second holder
				counter.Store(v + 1)
				end := time.Now()
				rec.held(le, start, end, le.Release(context.WithoutCancel(ctx)))
			}
		})
	}
	wg.Wait()
	if err := rec.err(); err != nil {
		c.Fatalf("under stress: %v", err)
	}
	if got, want := counter.Load(), int64(lockers*perLocker*rounds); got != want {
		c.Errorf("a counter incremented under the lock %d times reads %d: updates were lost to concurrent holders", want, got)
	}
	if f := checkHistory(rec.hist); f != nil {
		c.Errorf("%s", f)
	}
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }
