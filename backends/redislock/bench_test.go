package redislock_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
)

// BenchmarkPing is the yardstick: one bare round trip to the server, the
// unit the Locker's figures are multiples of on a loaded machine. "hot" sends
// PINGs back to back; "idle" waits 2ms before each, as
// BenchmarkHandoffOneWaiter does between hand-offs, and reports the p50 of
// that round trip (on a VM, waking idle CPUs costs more than the round trip).
func BenchmarkPing(b *testing.B) {
	for _, tp := range topologies {
		b.Run(tp.name+"/hot", func(b *testing.B) {
			c := tp.client(b, "")
			ctx := context.Background()
			for b.Loop() {
				if err := c.Ping(ctx).Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tp.name+"/idle", func(b *testing.B) {
			c := tp.client(b, "")
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				time.Sleep(2 * time.Millisecond)
				start := time.Now()
				if err := c.Ping(ctx).Err(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2]), "ns/ping-p50")
		})
	}
}

// BenchmarkHandoffOneWaiter measures the latency from the holder's Release
// call to the moment a single waiter blocked in lock.Acquire holds the key,
// and how many takes the waiter needed per hand-off (1 when woken by the
// release event, never polling).
func BenchmarkHandoffOneWaiter(b *testing.B) {
	for _, tp := range topologies {
		b.Run(tp.name, func(b *testing.B) {
			prefix := tp.testPrefix(b)
			var takes atomic.Int64
			holder := locker(b, tp.client(b, ""), redislock.WithPrefix(prefix))
			wc := tp.client(b, "")
			wc.AddHook(countHook{&takes})
			waiter := locker(b, wc, redislock.WithPrefix(prefix))
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			var n int64
			for b.Loop() {
				le, err := holder.TryAcquire(ctx, "k", 30*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				got := make(chan time.Time, 1)
				go func() {
					w, err := lock.Acquire(ctx, waiter, "k", 30*time.Second)
					at := time.Now()
					if err != nil {
						b.Error(err)
					} else if err := w.Release(ctx); err != nil {
						b.Error(err)
					}
					got <- at
				}()
				time.Sleep(2 * time.Millisecond) // let the waiter block; there is no event for that
				before := takes.Load()
				released := time.Now()
				if err := le.Release(ctx); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, (<-got).Sub(released))
				n += takes.Load() - before - 1 // minus the waiter's release
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2]), "ns/handoff-p50")
			b.ReportMetric(float64(lat[len(lat)*99/100]), "ns/handoff-p99")
			b.ReportMetric(float64(n)/float64(len(lat)), "takes/handoff")
		})
	}
}
