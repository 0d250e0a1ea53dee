package bench

import "testing"

// ScalingWaiters are the numbers of waiters per key of the Scaling
// workloads: BenchmarkScaling8, BenchmarkScaling64 and BenchmarkScaling512.
var ScalingWaiters = []int{8, 64, 512}

// ScalingClients is how many clients the waiters of a Scaling workload
// share, as ScalingClients processes with many waiting goroutines each
// would: 1 waiter per client at 8 waiters, 64 at 512.
const ScalingClients = 8

// Scales reports whether lib on be takes part in the Scaling workloads:
// the backends whose waiters are woken by the server (not memcached, which
// polls, nor memory, which has no server), idemlock's default
// configuration, and the libraries marked Scaling. On Consul only the
// libraries marked Scaling (idemlock with WithQueue, whose waiters share
// one blocking query per client): an unqueued waiter holds one blocking
// query (one HTTP connection) of its own, and at 512 waiters the agent
// refuses connections past its http_max_conns_per_client (200) with 429s.
func Scales(be Backend, lib Lib) bool {
	switch be.Name {
	case "memory", "memcached":
		return false
	case "consul":
		return lib.Scaling
	}
	return lib.Name == "idemlock" || lib.Scaling
}

// Scaling is the Handoff workload with waiters contenders on one key
// sharing ScalingClients clients: how hand-off latency, fairness and
// requests per hand-off grow with the number of waiters, in the key's
// steady state: the waiters' start-up, and the hand-offs until every
// client has taken the key once after it, are not measured (see handoff).
// It reports the same metrics as Handoff (ns/handoff-p50, ns/handoff-p99,
// acq-cv, acq-min/max, req/handoff), the unmeasured hand-offs
// (warmup-handoffs) and the measured ones (handoffs: b.N, or more where
// the window spans the backend's Background period; ns/op, B/op and
// allocs/op stay per b.N and include the quiescence and the warm-up).
func Scaling(b *testing.B, be Backend, lib Lib, env Env, prefix string, waiters int) {
	handoff(b, be, lib, env, prefix, waiters, min(ScalingClients, waiters), true)
}
