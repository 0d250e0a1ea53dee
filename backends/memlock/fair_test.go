package memlock_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
)

// Waiters are served in the order they started waiting: no contender is
// starved while others take turns.
func TestWaitersAreServedInOrder(t *testing.T) {
	l := memlock.New()
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	const contenders = 8
	counts := make([]int, contenders)
	var wg sync.WaitGroup
	for i := range contenders {
		wg.Go(func() {
			for ctx.Err() == nil {
				le, err := lock.Acquire(ctx, l, "k", time.Minute)
				if err != nil {
					return
				}
				counts[i]++
				time.Sleep(100 * time.Microsecond) // hold it
				_ = le.Release(context.Background())
				time.Sleep(50 * time.Microsecond) // do other work
			}
		})
	}
	wg.Wait()
	lo, hi := counts[0], counts[0]
	for _, n := range counts {
		lo, hi = min(lo, n), max(hi, n)
	}
	if hi == 0 || lo*3 < hi {
		t.Errorf("takes per contender %v: the least served got under a third of the most served", counts)
	}
}
