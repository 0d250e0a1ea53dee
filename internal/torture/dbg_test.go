package torture

import (
	"os"
	"sort"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func TestDbgMemcachedPause(t *testing.T) {
	for attempt := 0; attempt < 20; attempt++ {
		cfg := Config{
			Backend:  Backend{Name: "memcached", URL: "memcached://" + os.Getenv("IDEMLOCK_MEMCACHED_ADDR"), TTL: time.Second, Slack: 2500 * time.Millisecond},
			Workload: Workload{Keys: 4, Writes: 2, Hold: time.Millisecond, LongEvery: 20 * time.Second, LongHold: 1500 * time.Millisecond},
			Workers:  4, Procs: 2, ProcWorkers: 2,
			Faults: []Fault{PauseWorkerProcess(4500 * time.Millisecond)},
			Settle: 4500 * time.Millisecond,
		}
		r, err := Run(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		res := checkLinear(r.Records.Ops, cfg.Backend.TTL, cfg.Backend.Slack, nil, nil, 20*time.Second, "", "")
		for _, lr := range res {
			if lr.Result != porcupine.Illegal {
				continue
			}
			t.Logf("window %v..%v; key %d illegal at %v", time.Duration(r.Faults[0].Inject), time.Duration(r.Faults[0].Heal), lr.Key, time.Duration(lr.At))
			var ops []Op
			for _, op := range r.Records.Ops {
				if op.Key == lr.Key && op.Call > lr.At-int64(30*time.Millisecond) && op.Call < lr.At+int64(5*time.Millisecond) {
					ops = append(ops, op)
				}
			}
			sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
			for _, op := range ops {
				t.Logf("%-8s w%-2d lease %x tok %d [%v, %v] %s %s", op.Kind, op.Worker, op.Lease, op.Token, time.Duration(op.Call), time.Duration(op.Return), op.Outcome, op.Err)
			}
			return
		}
	}
}
