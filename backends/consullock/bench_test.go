package consullock_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
)

// BenchmarkAPILockRecipe measures Consul's own lock recipe (api.Lock: a
// session per lock, read, acquire, read back, a monitoring query, release
// and session destroy) for one uncontended lock + unlock, on the same agent
// and counter as BenchmarkConformance/TakeRelease, for comparison.
func BenchmarkAPILockRecipe(b *testing.B) {
	client, _ := newClient(b)
	k := "idemlock-bench/" + runID + "/api-lock"
	before := requests.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		lk, err := client.LockOpts(&api.LockOptions{Key: k, SessionTTL: "30s", SessionName: sessionName(b)})
		if err != nil {
			b.Fatal(err)
		}
		lost, err := lk.Lock(nil)
		if err != nil || lost == nil {
			b.Fatalf("api.Lock: %v", err)
		}
		if err := lk.Unlock(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(requests.Load()-before)/float64(b.N), "roundtrips/op")
	if _, err := client.KV().Delete(k, nil); err != nil {
		b.Error(err)
	}
}

// BenchmarkHandoffOneWaiter measures one hand-off at a time: a waiter
// blocked in lock.Acquire, the holder releases, and the time from the
// release's return to Acquire's return is one blocking-query return plus
// the waiter's take transaction.
func BenchmarkHandoffOneWaiter(b *testing.B) {
	holder, _ := newLocker(b)
	waiter, wc := newLocker(b)
	k := "idemlock-bench/" + runID + "/handoff-one"
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	var takes int
	b.ResetTimer()
	for range b.N {
		le, err := holder.TryAcquire(ctx, k, 30*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		got := make(chan time.Time, 1)
		go func() {
			w, err := lock.Acquire(ctx, waiter, k, 30*time.Second)
			at := time.Now()
			if err != nil {
				b.Error(err)
			} else if err := w.Release(ctx); err != nil {
				b.Error(err)
			}
			got <- at
		}()
		time.Sleep(2 * time.Millisecond) // let the waiter block; there is no event for that
		before := wc.snapshot()["txn"]
		if err := le.Release(ctx); err != nil {
			b.Fatal(err)
		}
		released := time.Now()
		lat = append(lat, (<-got).Sub(released))
		takes += wc.snapshot()["txn"] - before - 1 // minus the waiter's release
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2]), "ns/handoff-p50")
	b.ReportMetric(float64(lat[len(lat)*99/100]), "ns/handoff-p99")
	b.ReportMetric(float64(takes)/float64(b.N), "takes/handoff")
}
