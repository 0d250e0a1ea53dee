package torture

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock/internal/faults"
)

// The faults of the matrix, made with internal/faults on a private set of
// servers. Each heals when asked and, in any case, when the test ends.

// latency delays every client's traffic both ways by lat, jittered by half.
func latency(t *testing.T, nets []*faults.Net, lat time.Duration) Fault {
	var fs []*faults.Fault
	return Fault{
		Name:     fmt.Sprintf("latency %v±%v", lat, lat/2),
		Duration: 10 * lat,
		Inject: func(context.Context, *Env) error {
			fs = fs[:0]
			for _, n := range nets {
				fs = append(fs, n.Latency(t, faults.Both, lat, lat/2))
			}
			return nil
		},
		Heal: func(context.Context, *Env) error {
			for _, f := range fs {
				f.Heal()
			}
			return nil
		},
	}
}

// every runs act every 10-100 ms on a random client's Net while a fault
// lasts.
type every struct {
	stop chan struct{}
	wg   sync.WaitGroup
	hits atomic.Int64
}

func (e *every) start(nets []*faults.Net, act func(n *faults.Net, stop <-chan struct{}) int64) {
	e.stop = make(chan struct{})
	e.wg.Go(func() {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
		for {
			select {
			case <-e.stop:
				return
			case <-time.After(10*time.Millisecond + time.Duration(rng.Int64N(int64(90*time.Millisecond)))):
			}
			e.hits.Add(act(nets[rng.IntN(len(nets))], e.stop))
		}
	})
}

func (e *every) end() {
	if e.stop != nil {
		close(e.stop)
		e.wg.Wait()
		e.stop = nil
	}
}

// lostReplies loses replies for d: again and again, a random client's next
// reply is dropped after the server applied its request, and the
// connection reset (the unknown outcome).
func lostReplies(t *testing.T, nets []*faults.Net, d time.Duration) Fault {
	e := &every{}
	return Fault{
		Name:     "lost replies",
		Duration: d,
		Hits:     e.hits.Load,
		Inject: func(context.Context, *Env) error {
			e.start(nets, func(n *faults.Net, stop <-chan struct{}) int64 {
				f := n.LoseNextReply(t)
				defer f.Heal()
				select {
				case <-f.Hit():
				case <-time.After(300 * time.Millisecond):
				case <-stop:
				}
				return f.Hits()
			})
			return nil
		},
		Heal: func(context.Context, *Env) error { e.end(); return nil },
	}
}

// resets resets every open connection of a random client, again and again
// for d.
func resets(t *testing.T, nets []*faults.Net, d time.Duration) Fault {
	e := &every{}
	return Fault{
		Name:     "connection resets",
		Duration: d,
		Hits:     e.hits.Load,
		Inject: func(context.Context, *Env) error {
			e.start(nets, func(n *faults.Net, _ <-chan struct{}) int64 { return int64(n.Reset()) })
			return nil
		},
		Heal: func(context.Context, *Env) error { e.end(); return nil },
	}
}

// partition cuts half of the clients (at random) off the servers, both
// ways, for d; on heal the held traffic is delivered, late, as TCP does.
func partition(t *testing.T, nets []*faults.Net, d time.Duration) Fault {
	var fs []*faults.Fault
	return Fault{
		Name:     fmt.Sprintf("clients partitioned %v", d),
		Duration: d,
		Inject: func(_ context.Context, e *Env) error {
			fs = fs[:0]
			for _, i := range e.Pick(len(nets), (len(nets)+1)/2) {
				fs = append(fs, nets[i].BlackHole(t, faults.Both))
			}
			return nil
		},
		Heal: func(context.Context, *Env) error {
			for _, f := range fs {
				f.Heal()
			}
			return nil
		},
	}
}

// process returns a fault that runs start and heals what it returned.
func process(name string, d time.Duration, start func() *faults.Fault) Fault {
	var f *faults.Fault
	return Fault{
		Name:     name,
		Duration: d,
		Stalls:   true,
		Inject:   func(context.Context, *Env) error { f = start(); return nil },
		Heal: func(context.Context, *Env) error {
			if f != nil {
				f.Heal()
				f = nil
			}
			return nil
		},
	}
}

// serverPause pauses the server (SIGSTOP) for d; pauseLoss, if set,
// explains the leases the server loses early when it resumes.
func serverPause(t *testing.T, tp *faults.Topology, unit string, d time.Duration, pauseLoss string) Fault {
	f := process(fmt.Sprintf("server paused %v", d), d, func() *faults.Fault { return tp.Pause(t, unit) })
	if pauseLoss != "" {
		f.Breaks = []string{CheckExclusion, CheckLoss, CheckLinear}
		f.Caveat = pauseLoss
	}
	return f
}

// serverKill kills the server (kill -9) and starts it again after d, with
// the data it kept (servers.sh restart; a start of a killed single server
// would begin empty).
func serverKill(t *testing.T, tp *faults.Topology, unit string, d time.Duration, dataLoss string) Fault {
	f := process(fmt.Sprintf("server killed %v", d), d, func() *faults.Fault { return tp.Kill(t, unit) })
	f.Heal = func(context.Context, *Env) error { tp.Restart(t, unit); return nil }
	if dataLoss != "" {
		f.Breaks = []string{CheckExclusion, CheckLoss, CheckLinear, CheckTokenOrder, CheckEffects, CheckLiveness}
		f.Caveat = dataLoss
	}
	return f
}

// leaderFaults kill the etcd or Consul leader, or pause it past the
// election timeout, for d.
func leaderFaults(t *testing.T, tp *faults.Topology, d time.Duration) []Fault {
	return []Fault{
		process(fmt.Sprintf("leader killed %v", d), d, func() *faults.Fault { _, _, f := tp.KillLeader(t); return f }),
		process(fmt.Sprintf("leader paused %v", d), d, func() *faults.Fault { return tp.Pause(t, tp.Leader(t).Unit) }),
	}
}

// sentinelFaults fail the Redis primary over, with SENTINEL FAILOVER and by
// killing it.
func sentinelFaults(t *testing.T, tp *faults.Topology, d time.Duration) []Fault {
	failover := process("Sentinel failover", 0, func() *faults.Fault { tp.Failover(t); return nil })
	kill := process(fmt.Sprintf("primary killed %v", d), d, func() *faults.Fault { _, _, f := tp.KillLeader(t); return f })
	for _, f := range []*Fault{&failover, &kill} {
		f.Breaks = []string{CheckExclusion, CheckLoss, CheckLinear, CheckEffects, CheckLiveness}
		f.Caveat = redisFailover
	}
	return []Fault{failover, kill}
}

// clusterHAFaults promote a replica of the Redis Cluster (CLUSTER FAILOVER,
// which waits for the replica to catch up) and kill a primary (its replica
// is promoted without it).
func clusterHAFaults(t *testing.T, tp *faults.Topology, d time.Duration) []Fault {
	pick := func(role string) string {
		var units []string
		for _, n := range tp.Nodes(t) {
			if n.Role == role {
				units = append(units, n.Unit)
			}
		}
		if len(units) == 0 {
			t.Fatalf("no %s in %v", role, tp.Nodes(t))
		}
		return units[rand.IntN(len(units))]
	}
	promote := process("replica promoted", 0, func() *faults.Fault { tp.PromoteReplica(t, pick("replica")); return nil })
	kill := process(fmt.Sprintf("primary killed %v", d), d, func() *faults.Fault { _, f := tp.KillPrimary(t, pick("primary")); return f })
	kill.Breaks = []string{CheckExclusion, CheckLoss, CheckLinear, CheckEffects, CheckLiveness}
	kill.Caveat = redisFailover
	return []Fault{promote, kill}
}

// memcachedNodeFaults kill one of the three memcached nodes for d; it
// comes back empty.
func memcachedNodeFaults(t *testing.T, tp *faults.Topology, d time.Duration) []Fault {
	f := process(fmt.Sprintf("node killed %v", d), d, func() *faults.Fault {
		return tp.Kill(t, fmt.Sprintf("memcached-cluster-%d", 1+rand.IntN(3)))
	})
	f.Breaks = []string{CheckExclusion, CheckLoss, CheckLinear, CheckTokenOrder, CheckEffects, CheckLiveness}
	f.Caveat = memcachedDataLoss
	return []Fault{f}
}
