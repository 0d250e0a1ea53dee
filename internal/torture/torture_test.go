package torture

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"
)

// TestTorture runs the torture matrix: every backend under every fault it
// can be given, each cell a subtest TestTorture/<backend>/<cell>. By default
// (make test) each fault comes once per backend and any fenced-safety,
// token-order, linearizability or effect-count violation that no fault's
// documented caveat explains fails the test. With -torture.long (make
// torture) every backend gets at least -torture.takes contended takes, and
// -torture.json writes every cell's summary for the report.
var (
	longRun  = flag.Bool("torture.long", false, "run the long torture (make torture) instead of the short one")
	takes    = flag.Int("torture.takes", 100_000, "with -torture.long: contended takes per backend, spread over its cells")
	jsonOut  = flag.String("torture.json", "", "write every cell's summary as JSON to this file")
	visDir   = flag.String("torture.vis", "", "keep porcupine's visualisation of each failing history in this folder (default: the test's temporary folder)")
	parallel = flag.Bool("torture.parallel", true, "run the backends at once (their cells run one after another)")
)

func TestMain(m *testing.M) {
	if IsChild() {
		os.Exit(ChildMain())
	}
	// A restarted server makes go-redis log every failed dial.
	redis.SetLogger(&logging.VoidLogger{})
	os.Exit(m.Run())
}

// backendCase is a backend of the matrix: how to reach a private server of
// it, its timings, and the faults its server can be given.
type backendCase struct {
	name   string
	server testenv.Server // "" for the in-process memlock
	url    func(addrs []string) string
	ttl    time.Duration
	slack  time.Duration
	// dataLoss explains what a restart loses, for a server that keeps
	// nothing across one ("" for a durable server).
	dataLoss string
	// rate is a rough count of contended takes per second on this
	// machine, to size the long cells.
	rate int
}

func backendCases() []backendCase {
	return []backendCase{
		{name: "memlock", ttl: 200 * time.Millisecond, slack: 20 * time.Millisecond, rate: 2000},
		{
			name: "redis", server: testenv.Redis, ttl: time.Second, slack: 200 * time.Millisecond, rate: 350,
			url:      func(a []string) string { return "redis://" + a[0] + "/0" },
			dataLoss: "the test Redis runs without persistence (as a cache-only Redis does): a restart forgets every lock, so a new holder takes a key whose old holder still works; redislock's package doc states it",
		},
		{
			name: "etcd", server: testenv.Etcd, ttl: 2 * time.Second, slack: 3 * time.Second, rate: 180,
			url: func(a []string) string { return "etcd://" + hostPort(a[0]) },
		},
		{
			name: "consul", server: testenv.Consul, ttl: time.Second, slack: 2 * time.Second, rate: 120,
			url:      func(a []string) string { return "consul://" + a[0] + "/?min_ttl=1s" },
			dataLoss: "the test Consul agent runs in dev mode, which keeps its state in memory: a restart forgets every session and lock",
		},
		{
			name: "memcached", server: testenv.Memcached, ttl: time.Second, slack: 2500 * time.Millisecond, rate: 200,
			url:      func(a []string) string { return "memcached://" + a[0] },
			dataLoss: "memcached keeps nothing across a restart (and may evict a lock early): a memcached lock is best-effort unless the resource checks the fencing token, as its package doc says",
		},
	}
}

func hostPort(endpoint string) string {
	if _, rest, ok := strings.Cut(endpoint, "://"); ok {
		return rest
	}
	return endpoint
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
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			if *parallel {
				t.Parallel()
			}
			tortureBackend(t, bc)
		})
	}
}

// tortureBackend runs the cells of one backend on a private server.
func tortureBackend(t *testing.T, bc backendCase) {
	b := Backend{Name: bc.name, TTL: bc.ttl, Slack: bc.slack}
	var in *testenv.Instance
	topology := "in-process"
	if bc.server == "" {
		shared := memlock.New()
		b.Open = func() (lock.Locker, error) { return shared, nil }
	} else {
		in = testenv.Private(t, bc.server)
		b.URL = bc.url(in.Addrs())
		topology = "single node, private (" + string(bc.server) + ")"
	}
	type cell struct {
		name   string
		faults []Fault
	}
	d := bc.ttl + bc.slack // long enough for a lease to expire
	cs := []cell{{name: "healthy"}, {name: "holder stall", faults: []Fault{StallHolder(2, d+bc.ttl)}}}
	var serverFaults []Fault
	if in != nil {
		cs = append(cs, cell{name: "worker process pause", faults: []Fault{PauseWorkerProcess(d + bc.ttl)}})
		serverFaults = []Fault{serverPause(t, in, d+bc.ttl), serverRestart(t, in, bc.dataLoss)}
		for _, f := range serverFaults {
			cs = append(cs, cell{name: cellName(f.Name), faults: []Fault{f}})
		}
	}
	perCell := *takes / len(cs)
	for _, c := range cs {
		t.Run(cellName(c.name), func(t *testing.T) {
			cfg := Config{
				Backend:     b,
				Workload:    Workload{Keys: 4, Writes: 2, Hold: time.Millisecond, LongEvery: 20 * time.Second, LongHold: bc.ttl + bc.ttl/2},
				Workers:     4,
				Faults:      c.faults,
				Settle:      bc.ttl + bc.slack + time.Second,
				MinDuration: 5 * time.Second,
				Logf:        t.Logf,
			}
			if b.URL != "" {
				cfg.Procs, cfg.ProcWorkers = 2, 2
			}
			if *longRun {
				// Enough takes, unless the backend is far slower than its
				// rough rate says: then the cell stops at three times the
				// expected time, and the report shows the takes it got.
				expect := time.Duration(float64(perCell) / float64(bc.rate) * float64(time.Second))
				cfg.MinTakes = perCell
				cfg.MinDuration = 0
				cfg.MaxDuration = max(3*expect, time.Minute)
			}
			r, err := Run(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			rep := Check(r, CheckOptions{VisualDir: visualDir(t), VisualName: bc.name + "-" + cellName(c.name)})
			judge(t, rep.Checks(), CheckFenced, CheckTokenOrder, CheckLinear)
			sum := Summarize(rep, topology)
			sum.Cell, sum.Test = c.name, testPattern(t)
			logCell(t, sum)
			addCell(sum)
		})
	}
	t.Run("idempotency", func(t *testing.T) {
		faults := serverFaults
		if *longRun && in != nil {
			faults = append(faults, pastLease(serverPause(t, in, idempotency.DefaultLeaseTTL+bc.slack+time.Second)))
		}
		cfg := IdemConfig{
			Backend:     b,
			Clients:     8,
			LeaseTTL:    idempotency.DefaultLeaseTTL,
			Faults:      faults,
			Settle:      bc.ttl + bc.slack + time.Second,
			MinDuration: 5 * time.Second,
			Logf:        t.Logf,
		}
		if *longRun {
			cfg.MinDuration = 30 * time.Second
		}
		r, err := RunIdem(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		rep := CheckIdem(r)
		judge(t, []*CheckResult{&rep.Count}, CheckEffects)
		sum := SummarizeIdem(rep, topology)
		sum.Test = testPattern(t)
		t.Logf("%s/idempotency: %d keys, %d attempts, %d answered 2xx, %d charges; statuses %v; guard log %v; effect count %d (+%d caveat)",
			bc.name, rep.Keys, rep.Attempts, rep.Answered, rep.Effects, rep.Statuses, rep.Logged, sum.Checks[0].Violations, sum.Checks[0].Caveat)
		addCell(sum)
	})
}

// judge fails the test for each violation of the named checks that no
// fault's caveat explains, and logs the others.
func judge(t *testing.T, results []*CheckResult, fatal ...string) {
	t.Helper()
	must := map[string]bool{}
	for _, c := range fatal {
		must[c] = true
	}
	for _, c := range results {
		fails := c.Failures()
		for i, v := range fails {
			if i == 5 {
				t.Logf("%s: %d more", c.Name, len(fails)-5)
				break
			}
			where := "while healthy"
			if v.Fault != "" {
				where = "under " + v.Fault
			}
			if must[c.Name] {
				t.Errorf("%s violated %s: %s", c.Name, where, v.What)
			} else {
				t.Logf("%s violated %s: %s", c.Name, where, v.What)
			}
		}
	}
}

func logCell(t *testing.T, c Cell) {
	t.Helper()
	var parts []string
	for _, ch := range c.Checks {
		parts = append(parts, fmt.Sprintf("%s %d (+%d caveat)", ch.Name, ch.Violations, ch.Caveat))
	}
	t.Logf("%s/%s: %d takes (%d in worker processes) in %v; %s", c.Backend, c.Cell, c.Takes, c.ProcTakes, c.Duration.Round(time.Second), strings.Join(parts, ", "))
}

func addCell(c Cell) {
	cells.Lock()
	cells.list = append(cells.list, c)
	cells.Unlock()
}

var nonWord = regexp.MustCompile(`[^a-z0-9]+`)

// cellName is a fault name as a subtest name: "server paused 3s" →
// "server_paused".
func cellName(s string) string {
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
		return filepath.Join(*visDir)
	}
	return t.TempDir()
}

// pastLease marks a store pause longer than the idempotency lease: work in
// flight is done but its outcome cannot be recorded.
func pastLease(f Fault) Fault {
	f.Name = "store paused past the lease " + strings.TrimPrefix(f.Name, "server paused ")
	f.Breaks = []string{CheckEffects}
	f.Caveat = "a store outage longer than the in-progress lease while the handler runs: the charge is made, but Complete must refuse once the lease expired " +
		"(another request may own the key by then), so the outcome is not stored and a retry runs the handler again; the Guard logs a warning. " +
		"Only an effect that is idempotent by itself avoids it."
	return f
}

// serverPause pauses the private server (SIGSTOP) for d and resumes it.
func serverPause(t *testing.T, in *testenv.Instance, d time.Duration) Fault {
	return Fault{
		Name:     fmt.Sprintf("server paused %v", d),
		Duration: d,
		Inject:   func(context.Context, *Env) error { in.Pause(t); return nil },
		Heal:     func(context.Context, *Env) error { in.Resume(t); return nil },
	}
}

// serverRestart stops the private server and starts it again. A server
// that keeps nothing across a restart breaks, by design, what it held.
func serverRestart(t *testing.T, in *testenv.Instance, dataLoss string) Fault {
	f := Fault{
		Name:   "server restarted",
		Inject: func(context.Context, *Env) error { in.Restart(t); return nil },
	}
	if dataLoss != "" {
		f.Breaks = []string{CheckExclusion, CheckLoss, CheckLinear, CheckTokenOrder, CheckEffects, CheckLiveness}
		f.Caveat = dataLoss
	}
	return f
}
