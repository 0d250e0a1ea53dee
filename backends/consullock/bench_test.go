package consullock_test

import (
	"testing"

	"github.com/hashicorp/consul/api"
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
