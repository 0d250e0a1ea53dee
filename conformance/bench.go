package conformance

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
)

// Benchmark measures a backend through the contract, on whatever server
// Config.NewLockerTB connects to:
//
//   - TakeRelease: one goroutine, uncontended TryAcquire + Release pairs
//     (ns/op and allocs/op per pair; roundtrips/op when Config.RoundTrips is
//     set);
//   - Handoff: 8 goroutines on 8 Lockers contend for one key with
//     [lock.Acquire]; ns/handoff-p50 and ns/handoff-p99 are the latency from
//     a release to the next holder's take;
//   - ParallelKeys: GOMAXPROCS goroutines share one Locker over 1,000 keys.
//
// Output is benchstat-friendly.
func Benchmark(b *testing.B, cfg Config) {
	p := newParams(b, cfg)
	run := newRunID()
	b.Run("TakeRelease", func(b *testing.B) { benchTakeRelease(b, p, "idemlock-bench/"+run+"/take/") })
	b.Run("Handoff", func(b *testing.B) { benchHandoff(b, p, "idemlock-bench/"+run+"/handoff/") })
	b.Run("ParallelKeys", func(b *testing.B) { benchParallel(b, p, "idemlock-bench/"+run+"/parallel/") })
}

// roundTrips reports requests per operation since before, if countable.
func (p params) roundTrips(b *testing.B, before int64) {
	if p.RoundTrips != nil && b.N > 0 {
		b.ReportMetric(float64(p.RoundTrips()-before)/float64(b.N), "roundtrips/op")
	}
}

func (p params) count() int64 {
	if p.RoundTrips == nil {
		return 0
	}
	return p.RoundTrips()
}

func benchTakeRelease(b *testing.B, p params, prefix string) {
	l := p.newLocker(b)
	ctx := context.Background()
	key := prefix + strconv.Itoa(b.N)
	b.ReportAllocs()
	before := p.count()
	b.ResetTimer()
	for range b.N {
		le, err := l.TryAcquire(ctx, key, p.long)
		if err != nil {
			b.Fatalf("TryAcquire of an uncontended key: %v", err)
		}
		if err := le.Release(ctx); err != nil {
			b.Fatalf("Release: %v", err)
		}
	}
	b.StopTimer()
	p.roundTrips(b, before)
}

func benchHandoff(b *testing.B, p params, prefix string) {
	const contenders = 8
	ls := make([]lock.Locker, contenders)
	for i := range ls {
		ls[i] = p.newLocker(b)
	}
	key := prefix + strconv.Itoa(b.N)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var (
		left atomic.Int64
		rec  recorder
		wg   sync.WaitGroup
	)
	left.Store(int64(b.N))
	b.ResetTimer()
	for i := range contenders {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				le, err := lock.Acquire(ctx, ls[i], key, p.long)
				if err != nil {
					rec.fail(err)
					return
				}
				start := time.Now()
				end := time.Now()
				rec.held(le, start, end, le.Release(ctx))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if err := rec.err(); err != nil {
		b.Fatalf("hand-off: %v", err)
	}
	hist := rec.hist
	slices.SortFunc(hist, func(a, b holding) int { return a.start.Compare(b.start) })
	lat := make([]time.Duration, 0, len(hist))
	for i := 1; i < len(hist); i++ {
		lat = append(lat, hist[i].start.Sub(hist[i-1].end))
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2]), "ns/handoff-p50")
		b.ReportMetric(float64(lat[len(lat)*99/100]), "ns/handoff-p99")
	}
}

func benchParallel(b *testing.B, p params, prefix string) {
	l := p.newLocker(b)
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = prefix + strconv.Itoa(i)
	}
	var failed atomic.Value
	before := p.count()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		i := rand.IntN(len(keys))
		for pb.Next() {
			i = (i + 1) % len(keys)
			le, err := l.TryAcquire(ctx, keys[i], p.long)
			switch {
			case err == nil:
				if err := le.Release(ctx); err != nil {
					failed.CompareAndSwap(nil, err)
				}
			case !errors.Is(err, lock.ErrNotAcquired):
				failed.CompareAndSwap(nil, err)
			}
		}
	})
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatalf("parallel take+release: %v", err)
	}
	p.roundTrips(b, before)
}
