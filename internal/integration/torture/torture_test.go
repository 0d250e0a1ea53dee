package torture

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/faults"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"
)

// TestTorture runs the torture matrix: every backend, on single servers and
// on the cluster topologies, under every fault it can be given; each cell is
// a subtest TestTorture/<topology>/<cell>. By default (make test) the faults
// of a topology come once each, grouped into a few cells, and any
// fenced-safety, token-order, linearizability or effect-count violation that
// no fault's documented caveat explains fails the test. With -torture.long
// (make torture) every fault is a cell of its own and every backend gets
// about -torture.takes contended takes; -torture.json writes every cell's
// summary for the report.
var (
	longRun  = flag.Bool("torture.long", false, "run the long torture (make torture) instead of the short one")
	takes    = flag.Int("torture.takes", 100_000, "with -torture.long: contended takes per backend, spread over its topologies and cells")
	jsonOut  = flag.String("torture.json", "", "write every cell's summary as JSON to this file")
	visDir   = flag.String("torture.vis", "", "keep porcupine's visualisation of each failing history in this folder (default: the test's temporary folder)")
	parallel = flag.Bool("torture.parallel", true, "run the topologies in parallel (up to -test.parallel at once); their cells run one after another")
	strict   = flag.Bool("torture.strict", false, "fail on known issues too (see known)")
)

// knownIssue is a violation found on today's code, documented in the
// package it names and not fixed yet: it is logged and shown in the
// report, and fails the test only with -torture.strict. Delete its entry
// when the fix lands.
type knownIssue struct {
	check     string
	topology  string // a prefix of the topology's name; "" for all
	fault     string // a prefix of the fault in whose window it was found; "" for any
	logged    string // a line the Guard logged in the same cell, or ""
	violation string // a part of each violation it explains, or ""
	what      string
}

var known = []knownIssue{
	{
		check: CheckEffects, logged: "storing the result failed for good",
		what: "idempotency.Guard: when the store cannot take the response after the handler's work (unreachable for three lease " +
			"TTLs, or it lost the in-progress lease, as an etcd or Redis server restarted without the lease does), the key stays in " +
			"progress until the lease expires and a retry after that runs the handler again, so the effect happens twice " +
			"(idempotency's package doc, What happens when things fail)",
	},
	{
		check: CheckLinear, topology: "memcached", fault: "connection resets",
		what: "memcachedlock: a take whose add is retried after its connection reset cannot know whether its first add was " +
			"applied, or will be; if that first add reaches the server only after the key is free again, its item holds the key, " +
			"owned by no lease, until its TTL ends, and takes are refused meanwhile. The retry lets takes after a server restart " +
			"succeed or wait on (memcachedlock's package doc)",
	},
}

// markKnown sets Known on each violation a known issue explains and
// returns the issues that explained some.
func markKnown(results []*CheckResult, topo string, logged map[string]int) []string {
	var explained []string
	for _, c := range results {
		for i, v := range c.Violations {
			if v.Caveat {
				continue
			}
			if k := knownFor(c.Name, topo, logged, v); k != nil {
				c.Violations[i].Known = k.what
				if !slices.Contains(explained, k.what) {
					explained = append(explained, k.what)
				}
			}
		}
	}
	return explained
}

// knownFor returns the known issue that explains a violation of check in a
// cell, or nil.
func knownFor(check, topo string, logged map[string]int, v Violation) *knownIssue {
	for i, k := range known {
		if k.check != check || !strings.HasPrefix(topo, k.topology) || !strings.HasPrefix(v.Fault, k.fault) || !strings.Contains(v.What, k.violation) {
			continue
		}
		if k.logged != "" {
			found := false
			for line := range logged {
				found = found || strings.Contains(line, k.logged)
			}
			if !found {
				continue
			}
		}
		return &known[i]
	}
	return nil
}

func TestMain(m *testing.M) {
	if IsChild() {
		os.Exit(ChildMain())
	}
	// A restarted server makes go-redis log every failed dial.
	redis.SetLogger(&logging.VoidLogger{})
	os.Exit(m.Run())
}

// topology is one line of the matrix: a backend on a server or a topology
// of scripts/servers.sh, its timings, and the faults it can be given.
type topology struct {
	name    string // the subtest's name
	backend string // the backend, for the report's totals
	server  testenv.Server
	// url makes a client's URL from the server addresses it is given
	// (proxies' addresses when proxied).
	url func(addrs []string) string
	// proxied: every client reaches the servers through proxies of its
	// own, so that network faults can act on one client or all.
	proxied bool
	// queued: the odd-numbered workers open their Locker with the URL
	// option queue=true (queued waiting) and the others without, on the
	// same keys. Only for a backend that queues.
	queued bool
	// unit is the process of a single server, for pause and kill.
	unit  string
	ttl   time.Duration
	slack time.Duration
	// dataLoss explains what a kill loses, for a server that keeps nothing
	// across one ("" for a durable server).
	dataLoss string
	// pauseLoss explains the leases a pause of the server loses early
	// ("" for a server whose leases a pause only lengthens).
	pauseLoss string
	// share is this topology's part of the backend's takes in the long
	// run, and budget the most time its cells may take together (their
	// throughput differs by a factor of ten, and a loaded machine halves
	// it again).
	share  float64
	budget time.Duration
	// faults are the topology's own faults (leader kill, failover).
	faults func(t *testing.T, tp *faults.Topology, d time.Duration) []Fault
	// caveat is the backend's own documented caveat, and breaks and
	// applies what it may break, whatever the fault.
	caveat  string
	breaks  []string
	applies func(check string, v Violation) bool
}

const (
	redisDataLoss = "the test Redis runs without persistence (as a cache-only Redis does): a restart forgets every lock, " +
		"so a new holder takes a key whose old holder still works; redislock's package doc states it"
	consulDevDataLoss = "the single test Consul agent runs in dev mode, which keeps its state in memory: a restart forgets " +
		"every session and lock, and the raft index that makes the tokens starts again (the Consul cluster keeps its data)"
	memcachedDataLoss = "memcached keeps nothing across a restart (and may evict a lock early): a memcached lock is " +
		"best-effort unless the resource checks the fencing token, as memcachedlock's package doc says"
	memcachedEarly = "memcached counts expiry on a clock that ticks once a second; on a loaded machine a tick comes late and " +
		"the next one jumps, so an item can expire well before its TTL (memcachedlock sends the TTL plus one second, which a " +
		"lag of more than a second defeats): a lock is lost early and a new holder takes the key while the old one works. " +
		"memcachedlock's package doc calls a memcached lock best-effort unless the resource checks the fencing token; " +
		"the fence must, and fenced safety and token order stay strict"
	consulPause = "a Consul server paused (SIGSTOP) past a session's TTL runs, when it resumes, the session timers that fell due " +
		"while it stood still, at the same time as the renewals and takes it accepted on resume: a session renewed at that moment " +
		"can still be invalidated just after, so a lease taken or refreshed then is lost well before its TTL (Consul's timers are " +
		"not ordered with renewals); consullock's package doc states it. The holder learns it from its loss watcher; the fence holds"
	redisFailover = "Redis replicates asynchronously: a failover can lose a lock that was not yet replicated, and a new " +
		"holder then takes a key whose old holder still works; redislock's package doc states it"
)

func topologies() []topology {
	redisURL := func(a []string) string { return "redis://" + a[0] + "/0" }
	etcdURL := func(a []string) string { return "etcd://" + strings.Join(a, ",") }
	consulURL := func(a []string) string { return "consul://" + a[0] + "/?min_ttl=1s" }
	memcachedURL := func(a []string) string { return "memcached://" + strings.Join(a, ",") }
	return []topology{
		// The slowest first: up to -test.parallel run at once.
		{name: "etcd", queued: true, backend: "etcd", server: testenv.Etcd, url: etcdURL, proxied: true, unit: "etcd",
			ttl: 2 * time.Second, slack: 3 * time.Second, share: 0.7, budget: 19 * time.Minute},
		{name: "consul", queued: true, backend: "consul", server: testenv.Consul, url: consulURL, proxied: true, unit: "consul",
			ttl: time.Second, slack: 2 * time.Second, dataLoss: consulDevDataLoss, pauseLoss: consulPause, share: 0.7, budget: 22 * time.Minute},
		{name: "etcd-cluster", queued: true, backend: "etcd", server: testenv.EtcdCluster, url: etcdURL, proxied: true,
			ttl: 2 * time.Second, slack: 3 * time.Second, share: 0.3, budget: 6 * time.Minute, faults: leaderFaults},
		{name: "consul-cluster", queued: true, backend: "consul", server: testenv.ConsulCluster, url: consulURL, proxied: true,
			ttl: time.Second, slack: 3 * time.Second, share: 0.3, budget: 6 * time.Minute, faults: leaderFaults},
		{name: "redis", queued: true, backend: "redis", server: testenv.Redis, url: redisURL, proxied: true, unit: "redis",
			ttl: time.Second, slack: 200 * time.Millisecond, dataLoss: redisDataLoss, share: 0.6, budget: 4 * time.Minute},
		{name: "memcached", backend: "memcached", server: testenv.Memcached, url: memcachedURL, proxied: true, unit: "memcached",
			ttl: time.Second, slack: 2500 * time.Millisecond, dataLoss: memcachedDataLoss, share: 0.7, budget: 4 * time.Minute,
			caveat: memcachedEarly, breaks: memcachedBreaks, applies: earlyLoss},
		{name: "redis-sentinel", queued: true, backend: "redis", server: testenv.RedisSentinel,
			url: func(a []string) string {
				return "redis+sentinel://" + strings.Join(a, ",") + "/0?master_name=" + testenv.RedisSentinelMaster
			},
			ttl: time.Second, slack: 200 * time.Millisecond, share: 0.2, budget: 2 * time.Minute, faults: sentinelFaults},
		{name: "redis-cluster-ha", queued: true, backend: "redis", server: testenv.RedisClusterHA,
			url: func(a []string) string { return "redis+cluster://" + strings.Join(a, ",") },
			ttl: time.Second, slack: 200 * time.Millisecond, share: 0.2, budget: 2 * time.Minute, faults: clusterHAFaults},
		{name: "memcached-cluster", backend: "memcached", server: testenv.MemcachedCluster, url: memcachedURL, proxied: true,
			ttl: time.Second, slack: 2500 * time.Millisecond, share: 0.3, budget: 2 * time.Minute, faults: memcachedNodeFaults,
			caveat: memcachedEarly, breaks: memcachedBreaks, applies: earlyLoss},
		{name: "memlock", backend: "memlock", ttl: time.Second, slack: 20 * time.Millisecond, share: 1, budget: 2 * time.Minute},
	}
}

// memcachedBreaks is what a lock that memcached drops early breaks.
var memcachedBreaks = []string{CheckExclusion, CheckLoss, CheckLinear, CheckLiveness, CheckEffects}

// earlyLoss tells the violations a lock lost early explains: all but a
// linearizability failure at a refused take, which no early loss makes:
// memcachedlock refuses only while another item holds the key (a lease's,
// or that of the known issue of adds applied late).
func earlyLoss(check string, v Violation) bool {
	return check != CheckLinear || !strings.Contains(v.What, "fits nowhere: take lease 0 -> refused")
}

// cells collects the summaries for -torture.json.
var cells struct {
	sync.Mutex
	list []Cell
}

func TestTorture(t *testing.T) {
	t.Cleanup(func() {
		if *jsonOut == "" {
			return
		}
		cells.Lock()
		defer cells.Unlock()
		b, err := json.MarshalIndent(cells.list, "", "  ")
		if err == nil {
			err = os.WriteFile(*jsonOut, b, 0o644)
		}
		if err != nil {
			t.Errorf("writing %s: %v", *jsonOut, err)
		}
	})
	for _, tc := range topologies() {
		t.Run(tc.name, func(t *testing.T) {
			if *parallel {
				t.Parallel()
			}
			tortureTopology(t, tc)
		})
	}
}

// cell is one run of a topology: a name and the faults it injects.
type cell struct {
	name   string
	faults []Fault
}

// tortureTopology runs the cells of one topology on a private set of it.
func tortureTopology(t *testing.T, tc topology) {
	b := Backend{Name: tc.name, TTL: tc.ttl, Slack: tc.slack, Caveat: tc.caveat, Breaks: tc.breaks, CaveatApplies: tc.applies}
	var tp *faults.Topology
	var nets []*faults.Net // per client: workers 0…n-1, the idempotency store last
	topo := "in-process"
	// Twice as many workers as keys; the long run has more of both, for
	// throughput.
	keys, workers, procs, procWorkers := 4, 4, 2, 2
	if *longRun {
		keys, workers, procWorkers = 12, 12, 6
	}
	clients := workers + procs*procWorkers + 1
	if tc.server == "" {
		shared := memlock.New()
		b.Open = func() (lock.Locker, error) { return shared, nil }
	} else {
		tp = faults.Start(t, tc.server)
		topo = string(tc.server) + ", private"
		if tc.proxied {
			topo += ", each client through proxies of its own"
			for range clients {
				nets = append(nets, tp.Net(t))
			}
			addrs := tp.Addrs()
			b.ClientURL = func(i int) string {
				if i < 0 {
					i = len(nets) - 1
				}
				return tc.url(nets[i].Addrs(addrs))
			}
		} else {
			b.URL = tc.url(tp.Addrs())
		}
		if tc.queued {
			topo += ", the odd-numbered workers queued (queue=true)"
			base := b.ClientURL
			if base == nil {
				u := b.URL
				base = func(int) string { return u }
			}
			b.ClientURL = queuedHalf(base) // it overrides URL
		}
	}

	// d keeps a fault on long enough for a lease to expire under it.
	d := tc.ttl + tc.slack
	if *longRun {
		d += tc.ttl
	}
	cs := cellsOf(t, tc, tp, nets, d)
	perCell := int(float64(*takes) * tc.share / float64(len(cs)))
	start := time.Now()
	for i, c := range cs {
		t.Run(subtestName(c.name), func(t *testing.T) {
			cfg := Config{
				Backend: b,
				// Long holds (renewed by KeepAlive) are rare enough that
				// about one key at a time is held long: workers that chose
				// it wait, and too many of them would stall the run.
				Workload: Workload{Keys: keys, Writes: 2, Hold: time.Millisecond,
					LongEvery: time.Duration(4*(workers+procs*procWorkers)) * (tc.ttl + tc.ttl/2), LongHold: tc.ttl + tc.ttl/2},
				Workers: workers,
				Faults:  c.faults,
				Settle:  tc.ttl + tc.slack,
				Idem:    &IdemLoad{Clients: 4, LeaseTTL: idempotency.DefaultLeaseTTL},
				Logf:    t.Logf,
			}
			if b.URL != "" || b.ClientURL != nil {
				cfg.Procs, cfg.ProcWorkers = procs, procWorkers
			}
			if *longRun {
				// Enough takes, or the cell's part of the time budget: the
				// report shows what it got.
				cfg.MinTakes = perCell
				// What earlier cells left of the budget is shared by the
				// cells still to run.
				cfg.MaxDuration = max(time.Minute/2, (tc.budget-time.Since(start))/time.Duration(len(cs)-i))
			} else {
				cfg.MinDuration = 3 * time.Second
			}
			r, err := Run(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			rep := Check(r, CheckOptions{VisualDir: visualDir(t), VisualName: tc.name + "-" + subtestName(c.name)})
			var logged map[string]int
			if rep.Idem != nil {
				logged = rep.Idem.Logged
			}
			known := markKnown(rep.Checks(), tc.name, logged)
			judge(t, rep.Checks(), CheckFenced, CheckTokenOrder, CheckLinear, CheckEffects)
			if tc.queued && rep.QueuedTakes == 0 {
				t.Errorf("%d takes, none by a queued waiter: the odd-numbered workers did not wait queued", rep.Takes)
			}
			sum := Summarize(rep, topo)
			sum.Group, sum.Cell, sum.Test, sum.Known = tc.backend, c.name, testPattern(t), known
			logCell(t, sum)
			addCell(sum)
		})
	}
}

// cellsOf returns the cells of a topology: in the long run a healthy one
// and one per fault; in the short one the faults grouped into a few cells
// (each fault once, the faults of a group at the same time).
func cellsOf(t *testing.T, tc topology, tp *faults.Topology, nets []*faults.Net, d time.Duration) []cell {
	stall := StallHolder(2, d)
	if tp == nil {
		return []cell{{name: "healthy"}, {name: "holder stall", faults: []Fault{stall}}}
	}
	var network, clients, server []Fault
	clients = append(clients, stall, PauseWorkerProcess(d))
	if tc.proxied {
		network = []Fault{latency(t, nets, tc.ttl/10), lostReplies(t, nets, d), resets(t, nets, d)}
		clients = append(clients, partition(t, nets[:len(nets)-1], d))
	}
	if tc.unit != "" {
		server = []Fault{serverPause(t, tp, tc.unit, d, tc.pauseLoss), serverKill(t, tp, tc.unit, d, tc.dataLoss)}
	}
	if tc.faults != nil {
		server = append(server, tc.faults(t, tp, d)...)
	}
	if *longRun {
		cs := []cell{{name: "healthy"}}
		for _, f := range append(append(network, clients...), server...) {
			cs = append(cs, cell{name: f.Name, faults: []Fault{f}})
		}
		return cs
	}
	var cs []cell
	if tc.faults == nil {
		// A cluster topology's short run is about its own faults; the
		// client faults run on its single server.
		if len(network) > 0 {
			cs = append(cs, cell{name: "network faults", faults: []Fault{Combine("flaky network", network...)}})
		}
		cs = append(cs, cell{name: "client faults", faults: []Fault{Combine("stuck clients", clients...)}})
	}
	if len(server) > 0 {
		cs = append(cs, cell{name: "server faults", faults: server})
	}
	return cs
}

// judge fails the test for each violation of the named checks that no
// fault's caveat explains (nor a known issue, unless -torture.strict), and
// logs the others.
func judge(t *testing.T, results []*CheckResult, fatal ...string) {
	t.Helper()
	for _, c := range results {
		must := slices.Contains(fatal, c.Name)
		fails := c.Failures()
		more := 0
		for i, v := range fails {
			failing := must && (v.Known == "" || *strict)
			if i >= 5 {
				if failing {
					more++
				}
				continue
			}
			where := "while healthy"
			if v.Fault != "" {
				where = "under " + v.Fault
			}
			switch {
			case failing:
				t.Errorf("%s violated %s: %s", c.Name, where, v.What)
			case v.Known != "":
				t.Logf("KNOWN ISSUE (%s): %s violated %s: %s", v.Known, c.Name, where, v.What)
			default:
				t.Logf("%s violated %s: %s", c.Name, where, v.What)
			}
		}
		if more > 0 {
			t.Errorf("%s: %d more violations", c.Name, more)
		} else if len(fails) > 5 {
			t.Logf("%s: %d more violations, known or not failing", c.Name, len(fails)-5)
		}
	}
}

func logCell(t *testing.T, c Cell) {
	t.Helper()
	var parts []string
	for _, ch := range c.Checks {
		parts = append(parts, fmt.Sprintf("%s %d (+%d known, +%d caveat)", ch.Name, ch.Violations, ch.Known, ch.Caveat))
	}
	t.Logf("%s/%s: %d takes (%d in worker processes, %d by queued waiters) in %v, %d attempts, %d unknown outcomes, %d failed Acquires; %s",
		c.Backend, c.Cell, c.Takes, c.ProcTakes, c.QueuedTakes, c.Duration.Round(time.Second), c.Attempts, c.Unknown, c.AcqErrors, strings.Join(parts, ", "))
	if i := c.Idem; i != nil {
		t.Logf("%s/%s idempotency: %d keys, %d requests, %d answered 2xx, %d charges; answers %v; guard log %v",
			c.Backend, c.Cell, i.Keys, i.Attempts, i.Answered, i.Effects, i.Statuses, i.Logged)
	}
}

func addCell(c Cell) {
	cells.Lock()
	cells.list = append(cells.list, c)
	cells.Unlock()
}

var nonWord = regexp.MustCompile(`[^a-z0-9]+`)

// subtestName makes a cell's name a subtest name: "server paused 3s" →
// "server_paused".
func subtestName(s string) string {
	s = strings.ToLower(s)
	if i := strings.IndexFunc(s, func(r rune) bool { return r >= '0' && r <= '9' }); i > 0 {
		s = s[:i]
	}
	return strings.Trim(nonWord.ReplaceAllString(s, "_"), "_")
}

// testPattern is the -run pattern that runs only this subtest.
func testPattern(t *testing.T) string {
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

func visualDir(t *testing.T) string {
	if *visDir != "" {
		return *visDir
	}
	return t.TempDir()
}

// queuedHalf returns the client URLs of urlFor with queue=true (queued
// waiting) for the odd-numbered workers, so that queued and unqueued
// Lockers share every key; the idempotency store (client -1) is left as
// it was.
func queuedHalf(urlFor func(int) string) func(int) string {
	return func(i int) string {
		u := urlFor(i)
		if i < 0 || i%2 == 0 {
			return u
		}
		sep := "?"
		if strings.Contains(u, "?") {
			sep = "&"
		}
		return u + sep + "queue=true"
	}
}
