package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idemlock/lock"

	// Worker processes open backends by URL.
	_ "github.com/idemlock/lock/backends/consullock"
	_ "github.com/idemlock/lock/backends/etcdlock"
	_ "github.com/idemlock/lock/backends/memcachedlock"
	_ "github.com/idemlock/lock/backends/memlock"
	_ "github.com/idemlock/lock/backends/redislock"
)

// Backend is a lock backend under torture.
type Backend struct {
	Name string
	// URL, when set, opens the backend with lock.Open for every worker, in
	// this process and in worker processes: each worker has a client of
	// its own.
	URL string
	// ClientURL, when set, gives each client a URL of its own (its own
	// proxies, so that a fault can cut off one client): worker i gets
	// ClientURL(i), the idempotency store ClientURL(-1). It overrides URL.
	ClientURL func(client int) string
	// Open, used when URL is empty, returns the Locker of one worker; such
	// a backend lives in this process, so a run has no worker processes.
	Open func() (lock.Locker, error)
	// TTL is the lease TTL the workers take. Slack is how much later than
	// its TTL the server may expire a lease (its TTL step, rounding and
	// expiry lag); the checkers allow it.
	TTL   time.Duration
	Slack time.Duration
	// Caveat, when set, is the backend's own documented caveat: a
	// violation of a check in Breaks is counted apart, as under a fault's
	// caveat, whenever it happens (and CaveatApplies, if set, says so).
	Caveat        string
	Breaks        []string
	CaveatApplies func(check string, v Violation) bool
}

// urlFor returns the URL of client i, or "" for a backend without one.
func (b *Backend) urlFor(i int) string {
	if b.ClientURL != nil {
		return b.ClientURL(i)
	}
	return b.URL
}

// networked reports whether the backend is reached by URL, so that worker
// processes can reach it too.
func (b *Backend) networked() bool { return b.URL != "" || b.ClientURL != nil }

// open returns a new Locker for client i and the function that closes it.
func (b *Backend) open(ctx context.Context, i int) (lock.Locker, func() error, error) {
	url := b.urlFor(i)
	if url == "" {
		if b.Open == nil {
			return nil, nil, fmt.Errorf("torture: backend %s has neither a URL nor an Open function", b.Name)
		}
		l, err := b.Open()
		if err != nil {
			return nil, nil, err
		}
		closer := func() error { return nil }
		if c, ok := l.(interface{ Close() error }); ok {
			closer = c.Close
		}
		return l, closer, nil
	}
	l, err := lock.Open(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	return l, l.Close, nil
}

// Config is one run: a backend, a workload, who contends, and the faults.
type Config struct {
	Backend  Backend
	Workload Workload
	// Workers run in this process; Procs worker processes run ProcWorkers
	// each (only for a backend with a URL).
	Workers     int
	Procs       int
	ProcWorkers int
	// Faults are injected in turn, each for its Duration and then healed,
	// with Settle of health before the first and after each; the schedule
	// repeats until the run has MinTakes takes and lasted MinDuration (and
	// every fault came once), or lasted MaxDuration.
	Faults      []Fault
	Settle      time.Duration
	MinTakes    int
	MinDuration time.Duration
	MaxDuration time.Duration
	// Idem, if set, runs idempotency clients beside the workers, on a
	// client of their own, under the same faults.
	Idem *IdemLoad
	// Prefix starts every key of the run (default: a random one).
	Prefix string
	Seed   uint64
	// Exec is the command line that starts a worker process: a binary
	// whose main (or TestMain) calls [ChildMain] first. Default: this
	// process's own binary.
	Exec []string
	// Logf, if set, gets a line at each step of the schedule.
	Logf func(format string, args ...any)
}

// FaultWindow is one injection of a fault in a run.
type FaultWindow struct {
	Name   string
	Caveat string
	Inject int64 // when the injection began
	Heal   int64 // when the heal finished
	Err    string
	Hits   int64 // the times the fault acted, when it counts them
}

// Result is the history of one run.
type Result struct {
	Config  Config
	Start   int64
	End     int64
	Records Records
	Writes  []WriteRecord
	Faults  []FaultWindow
	Idem    *IdemResult // when Config.Idem was set
}

// Run runs cfg until its schedule is done and returns the history.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Backend.TTL <= 0 {
		return nil, errors.New("torture: backend TTL must be positive")
	}
	cfg.Workload.TTL = cfg.Backend.TTL
	cfg.Workload.fill()
	if cfg.Workers <= 0 && cfg.Procs <= 0 {
		cfg.Workers = 2 * cfg.Workload.Keys
	}
	if !cfg.Backend.networked() {
		cfg.Procs = 0
	}
	if cfg.Procs > 0 && !sharedClock {
		return nil, errors.New("torture: worker processes need a clock shared by processes (Linux)")
	}
	if cfg.Procs > 0 && cfg.ProcWorkers <= 0 {
		cfg.ProcWorkers = 2
	}
	if cfg.Prefix == "" {
		cfg.Prefix = fmt.Sprintf("torture/%x/", rand.Uint64())
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 2*cfg.Backend.TTL + cfg.Backend.Slack
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}

	clock := NewClock()
	res := NewResource(clock)
	r := &Result{Config: cfg, Start: clock.Now()}
	keys := keyIndex(cfg.Prefix)

	// Workers in this process.
	set := &workerSet{}
	defer set.closeAll()
	for i := range cfg.Workers {
		l, closer, err := cfg.Backend.open(ctx, i)
		if err != nil {
			return nil, fmt.Errorf("torture: opening %s: %w", cfg.Backend.Name, err)
		}
		set.close = append(set.close, closer)
		set.ws = append(set.ws, newWorker(i, 0, cfg, l, keys, clock, localFence{res}))
	}

	// Worker processes, writing to the resource over RPC. Every exit path
	// below stops them, and the workers, even a fault's runtime.Goexit
	// (testing.T.FailNow).
	var procs []*proc
	var procRecs Records
	var procErrs []string
	stopProcs := func() {
		for _, pr := range procs {
			pr.resume() // a paused process could not stop
			got, err := pr.stop()
			if err != nil {
				procErrs = append(procErrs, err.Error())
				continue
			}
			procRecs.merge(got)
		}
		procs = nil
	}
	defer stopProcs()
	if cfg.Procs > 0 {
		addr, stop, err := serveResource(ctx, res)
		if err != nil {
			return nil, err
		}
		defer stop()
		for p := range cfg.Procs {
			spec := childSpec{
				Workload: cfg.Workload, Prefix: cfg.Prefix, Epoch: clock.Epoch(),
				Resource: addr, Proc: p + 1, FirstWorker: cfg.Workers + p*cfg.ProcWorkers,
				Seed: cfg.Seed + uint64(p+1),
			}
			for i := range cfg.ProcWorkers {
				spec.URLs = append(spec.URLs, cfg.Backend.urlFor(spec.FirstWorker+i))
			}
			pr, err := startProc(cfg.Exec, spec)
			if err != nil {
				return nil, err
			}
			procs = append(procs, pr)
		}
	}

	wctx, stopWorkers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { set.run(wctx) })
	defer func() { stopWorkers(); wg.Wait() }()

	var idem *idemRun
	if cfg.Idem != nil {
		var err error
		if idem, err = startIdem(ctx, &cfg.Backend, *cfg.Idem, clock, cfg.Seed); err != nil {
			return nil, err
		}
		defer func() {
			if idem != nil {
				idem.finish()
			}
		}()
	}

	env := &Env{procs: procs, workers: set.ws, rng: rand.New(rand.NewPCG(cfg.Seed, 1)), Backend: cfg.Backend}
	defer func() {
		for _, p := range env.paused {
			p.resume()
		}
	}()
	schedErr := schedule(ctx, cfg, env, res.Takes, clock, r, logf)

	stopWorkers()
	wg.Wait()
	if idem != nil {
		r.Idem = idem.finish()
		idem = nil
	}
	recs := set.records()
	stopProcs()
	recs.merge(procRecs)
	r.End = clock.Now()
	sort.Slice(recs.Ops, func(i, j int) bool { return recs.Ops[i].Call < recs.Ops[j].Call })
	sort.Slice(recs.Takes, func(i, j int) bool { return recs.Takes[i].Taken < recs.Takes[j].Taken })
	r.Records = recs
	r.Writes = res.Log()
	if len(procErrs) > 0 {
		return r, fmt.Errorf("torture: worker processes: %s", strings.Join(procErrs, "; "))
	}
	if schedErr != nil && ctx.Err() == nil {
		return r, schedErr
	}
	return r, ctx.Err()
}

// schedule runs the fault schedule of cfg and records each window in r;
// progress counts the takes so far.
func schedule(ctx context.Context, cfg Config, env *Env, progress func() int, clock *Clock, r *Result, logf func(string, ...any)) error {
	begin := time.Now()
	enough := func(rounds int) bool {
		el := time.Since(begin)
		if cfg.MaxDuration > 0 && el >= cfg.MaxDuration {
			return true
		}
		return rounds >= len(cfg.Faults) && el >= cfg.MinDuration && progress() >= cfg.MinTakes
	}
	if err := sleepCtx(ctx, cfg.Settle); err != nil {
		return err
	}
	for i := 0; !enough(i); i++ {
		if len(cfg.Faults) == 0 {
			if err := sleepCtx(ctx, cfg.Settle); err != nil {
				return err
			}
			continue
		}
		f := cfg.Faults[i%len(cfg.Faults)]
		w := FaultWindow{Name: f.Name, Caveat: f.Caveat, Inject: clock.Now()}
		logf("%s: %s: inject (%d so far)", cfg.Backend.Name, f.Name, progress())
		var hits0 int64
		if f.Hits != nil {
			hits0 = f.Hits()
		}
		err := f.inject(ctx, env)
		if err == nil {
			err = sleepCtx(ctx, f.Duration)
		}
		// Heal whatever happened, with a context of its own: a fault is
		// never left behind.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
		if herr := f.heal(hctx, env); herr != nil {
			err = errors.Join(err, herr)
		}
		cancel()
		w.Heal = clock.Now()
		if f.Hits != nil {
			w.Hits = f.Hits() - hits0
		}
		if err != nil {
			w.Err = err.Error()
			logf("%s: %s: %v", cfg.Backend.Name, f.Name, err)
		}
		r.Faults = append(r.Faults, w)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := sleepCtx(ctx, cfg.Settle); err != nil {
			return err
		}
	}
	return nil
}

// keyIndex maps a key name of the run back to its index.
func keyIndex(prefix string) func(string) int {
	return func(name string) int {
		i, err := strconv.Atoi(strings.TrimPrefix(name, prefix+"k"))
		if err != nil {
			return -1
		}
		return i
	}
}

func newWorker(id, procNum int, cfg Config, l lock.Locker, keys func(string) int, clock *Clock, f fence) *worker {
	rec := &recorder{clock: clock, worker: id, key: keys}
	return &worker{
		id: id, proc: procNum, prefix: cfg.Prefix, load: cfg.Workload,
		locker: record(l, rec), rec: rec, fence: f, clock: clock,
		rng: rand.New(rand.NewPCG(cfg.Seed, uint64(id))), stall: &stall{},
	}
}

func (s *workerSet) closeAll() {
	for _, c := range s.close {
		_ = c()
	}
}
