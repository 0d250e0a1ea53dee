package torture

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Violation is one breach of a check, with the fault window it happened in.
type Violation struct {
	Key int
	At  int64 // on the run's clock
	// From, when set, starts the interval the violation spans: a token
	// order violation spans from the earlier take to the later one, and
	// the fault behind it may lie anywhere in between.
	From int64
	What string // a readable example
	// Fault is the name of the fault whose window (injection to heal plus
	// the settle time) holds At, or "" when the backend was healthy;
	// Caveat is true when that fault is documented to break the check.
	Fault  string
	Caveat bool
	// Known, when set, names the known issue (found here, fixed
	// elsewhere) that explains the violation.
	Known string `json:",omitempty"`
}

// CheckResult is the verdict of one check on a run.
type CheckResult struct {
	Name       string
	Violations []Violation
}

// Failures returns the violations that no fault's caveat explains.
func (c *CheckResult) Failures() []Violation {
	var out []Violation
	for _, v := range c.Violations {
		if !v.Caveat {
			out = append(out, v)
		}
	}
	return out
}

// Report is every check's verdict on one run, with the figures behind it.
type Report struct {
	Backend       string
	Duration      time.Duration
	Takes         int // successful takes
	Ops           int // recorded lock operations
	Attempts      int // TryAcquire calls
	Unknown       int // operations with an unknown outcome
	AcquireErrors int
	AcquireError  string // one of their errors
	Workers       int    // in all
	ProcWorkers   int    // of which in worker processes
	Procs         int
	ProcTakes     int // takes made in worker processes
	QueuedTakes   int // takes made by queued waiters' tickets
	TTL           time.Duration
	Slack         time.Duration
	Faults        []FaultWindow
	FaultDefs     []Fault
	// BackendCaveat and BackendBreaks are the backend's own caveat.
	BackendCaveat string
	BackendBreaks []string

	Fenced    CheckResult
	Stale     int // writes the fence refused
	Exclusion CheckResult
	// MaxOverlap is the longest overlap of two live critical sections.
	MaxOverlap time.Duration
	TokenOrder CheckResult
	Loss       CheckResult
	// LossLatency holds, for each lease whose loss a KeepAlive context
	// reported, the time from the earliest moment its server could expire
	// it (its last successful renewal's call plus the TTL) to the
	// cancellation: negative when the holder stopped before the server
	// could have handed the key on.
	LossLatency []time.Duration
	// ExpiredOnArrival counts the leases whose Acquire returned after
	// their TTL had run out (left out of LossLatency).
	ExpiredOnArrival int
	Liveness         CheckResult
	// Recovery holds, for each heal and key, the time until a worker took
	// the key again; LivenessBound is the most a key may stay stuck.
	Recovery      []time.Duration
	LivenessBound time.Duration
	Linear        CheckResult
	LinearResults []LinearResult
	// HistoryFile holds the whole history of a run that failed fenced
	// safety, token order or linearizability, as text.
	HistoryFile string
	// Effects judges the idempotency clients, when the run had them.
	Effects CheckResult
	Idem    *IdemFigures
}

// Checks returns the check results in the report's order.
func (r *Report) Checks() []*CheckResult {
	cs := []*CheckResult{&r.Fenced, &r.Exclusion, &r.TokenOrder, &r.Loss, &r.Liveness, &r.Linear}
	if r.Idem != nil {
		cs = append(cs, &r.Effects)
	}
	return cs
}

// CheckOptions tune [Check].
type CheckOptions struct {
	// LinearTimeout bounds the linearizability check of one key (default
	// one minute); a key that runs out is reported as unknown, not failed.
	LinearTimeout time.Duration
	// VisualDir, if set, receives porcupine's visualisation of every
	// failing key's history; VisualName prefixes the files.
	VisualDir  string
	VisualName string
}

// Check runs every checker on the history of a run.
func Check(r *Result, opt CheckOptions) *Report {
	if opt.LinearTimeout <= 0 {
		opt.LinearTimeout = time.Minute
	}
	cfg := r.Config
	rep := &Report{
		Backend: cfg.Backend.Name, Duration: time.Duration(r.End - r.Start), Ops: len(r.Records.Ops),
		AcquireErrors: r.Records.AcquireErrors, AcquireError: r.Records.LastError, Workers: cfg.Workers + cfg.Procs*cfg.ProcWorkers, ProcWorkers: cfg.Procs * cfg.ProcWorkers, Procs: cfg.Procs,
		Faults: r.Faults, FaultDefs: cfg.Faults, TTL: cfg.Backend.TTL, Slack: cfg.Backend.Slack,
		BackendCaveat: cfg.Backend.Caveat, BackendBreaks: cfg.Backend.Breaks,
	}
	for _, op := range r.Records.Ops {
		if op.Kind == Take {
			rep.Attempts++
			if op.Outcome == OK {
				rep.Takes++
				if op.Queued {
					rep.QueuedTakes++
				}
			}
		}
		if op.Outcome == Unknown {
			rep.Unknown++
		}
	}
	for _, t := range r.Records.Takes {
		if t.Proc != 0 {
			rep.ProcTakes++
		}
	}
	at := windows(r)
	rep.Fenced = CheckResult{Name: CheckFenced, Violations: at.mark(CheckFenced, checkFenced(r.Writes, &rep.Stale))}
	rep.Exclusion = CheckResult{Name: CheckExclusion, Violations: at.mark(CheckExclusion, checkExclusion(r.Records.Takes, &rep.MaxOverlap))}
	rep.TokenOrder = CheckResult{Name: CheckTokenOrder, Violations: at.mark(CheckTokenOrder, checkTokenOrder(r.Records.Ops))}
	rep.Loss = CheckResult{Name: CheckLoss, Violations: at.mark(CheckLoss, checkLoss(r, &rep.LossLatency, &rep.ExpiredOnArrival))}
	rep.LivenessBound = livenessBound(cfg)
	rep.Liveness = CheckResult{Name: CheckLiveness, Violations: at.mark(CheckLiveness, checkLiveness(r, rep.LivenessBound, &rep.Recovery))}
	rep.LinearResults = checkLinear(r.Records.Ops, cfg.Backend.TTL, cfg.Backend.Slack, at.stalls(), at.skipped(CheckLinear), opt.LinearTimeout, opt.VisualDir, opt.VisualName)
	var lin []Violation
	for _, lr := range rep.LinearResults {
		if lr.Result == porcupine.Illegal {
			what := fmt.Sprintf("key %d: %d operations are not linearizable as a TTL lock with fencing tokens; the first that fits nowhere: %s", lr.Key, lr.Ops, lr.First)
			if lr.File != "" {
				what += " (see " + lr.File + ")"
			}
			lin = append(lin, Violation{Key: lr.Key, At: lr.At, What: what})
		}
	}
	rep.Linear = CheckResult{Name: CheckLinear, Violations: at.mark(CheckLinear, lin)}
	if r.Idem != nil {
		rep.Idem = &IdemFigures{}
		rep.Effects = CheckResult{Name: CheckEffects, Violations: at.mark(CheckEffects, checkEffects(r.Idem, rep.Idem))}
	}
	if opt.VisualDir != "" && len(rep.Fenced.Failures())+len(rep.TokenOrder.Failures())+len(rep.Linear.Failures()) > 0 {
		rep.HistoryFile = writeHistory(r, opt.VisualDir, opt.VisualName)
	}
	return rep
}

// faultTimes attributes moments of a run to its fault windows.
type faultTimes struct {
	backend *Backend
	ws      []FaultWindow
	breaks  []map[string]bool
	stall   []bool
	settle  int64
}

func windows(r *Result) faultTimes {
	ft := faultTimes{backend: &r.Config.Backend, ws: r.Faults, settle: int64(r.Config.Settle)}
	byName := map[string]Fault{}
	for _, f := range r.Config.Faults {
		byName[f.Name] = f
	}
	for _, w := range r.Faults {
		f := byName[w.Name]
		m := map[string]bool{}
		for _, c := range f.Breaks {
			m[c] = true
		}
		ft.breaks = append(ft.breaks, m)
		ft.stall = append(ft.stall, f.Stalls)
	}
	return ft
}

// stalls returns the windows in which the server may have stood still.
func (ft faultTimes) stalls() []span {
	var out []span
	for i, w := range ft.ws {
		if ft.stall[i] {
			out = append(out, span{w.Inject, w.Heal})
		}
	}
	return out
}

// skipped returns the windows of the faults documented to break check.
func (ft faultTimes) skipped(check string) []span {
	var out []span
	for i, w := range ft.ws {
		if ft.breaks[i][check] {
			out = append(out, span{w.Inject, w.Heal + ft.settle})
		}
	}
	return out
}

// mark sets Fault and Caveat of each violation.
func (ft faultTimes) mark(check string, vs []Violation) []Violation {
	for i := range vs {
		from := vs[i].From
		if from == 0 || from > vs[i].At {
			from = vs[i].At
		}
		// The latest window the violation's interval overlaps, preferring
		// one whose fault is documented to break the check.
		for j := len(ft.ws) - 1; j >= 0; j-- {
			w := ft.ws[j]
			if from > w.Heal+ft.settle || vs[i].At < w.Inject {
				continue
			}
			if vs[i].Fault == "" || ft.breaks[j][check] {
				vs[i].Fault = w.Name
				vs[i].Caveat = ft.breaks[j][check]
			}
			if vs[i].Caveat {
				break
			}
		}
		if b := ft.backend; !vs[i].Caveat && b != nil && b.Caveat != "" && slices.Contains(b.Breaks, check) &&
			(b.CaveatApplies == nil || b.CaveatApplies(check, vs[i])) {
			vs[i].Caveat = true
			if vs[i].Fault == "" {
				vs[i].Fault = b.Name + " itself"
			}
		}
	}
	return vs
}

// checkFenced replays the resource's log: per key, no accepted write may
// carry a lower token than an earlier accepted one, and once another
// lease's write was accepted, no earlier lease may write again (two leases
// with one token would pass the fence and interleave).
func checkFenced(log []WriteRecord, stale *int) []Violation {
	type keyState struct {
		high  uint64
		last  uint64 // lease of the last accepted write
		done  map[uint64]bool
		token map[uint64]uint64
	}
	keys := map[int]*keyState{}
	var out []Violation
	for _, w := range log {
		if !w.Accepted {
			*stale++
			continue
		}
		ks := keys[w.Key]
		if ks == nil {
			ks = &keyState{done: map[uint64]bool{}, token: map[uint64]uint64{}}
			keys[w.Key] = ks
		}
		switch {
		case w.Token < ks.high:
			out = append(out, Violation{Key: w.Key, At: w.At, What: fmt.Sprintf("key %d: write %d of lease %x with token %d accepted after token %d", w.Key, w.Seq, w.Lease, w.Token, ks.high)})
		case ks.done[w.Lease]:
			out = append(out, Violation{Key: w.Key, At: w.At, What: fmt.Sprintf("key %d: lease %x (token %d) wrote again after lease %x (token %d) had written: interleaved critical sections", w.Key, w.Lease, w.Token, ks.last, ks.token[ks.last])})
		}
		if ks.last != 0 && ks.last != w.Lease {
			ks.done[ks.last] = true
		}
		ks.last, ks.high = w.Lease, max(ks.high, w.Token)
		ks.token[w.Lease] = w.Token
	}
	return out
}

// checkExclusion finds takes of one key whose live critical sections (from
// the take to the end of the critical section or of the KeepAlive context)
// overlap: one violation per take that others entered while it was live,
// saying how many did.
func checkExclusion(takes []TakeRecord, longest *time.Duration) []Violation {
	byKey := map[int][]TakeRecord{}
	for _, t := range takes {
		byKey[t.Key] = append(byKey[t.Key], t)
	}
	var out []Violation
	for k, ts := range byKey {
		sort.Slice(ts, func(i, j int) bool { return ts[i].Taken < ts[j].Taken })
		var cur *TakeRecord // the take with the latest end so far
		var entered []*TakeRecord
		var overlap time.Duration
		flush := func() {
			if len(entered) == 0 {
				return
			}
			first := entered[0]
			what := fmt.Sprintf("key %d: worker %d (token %d) took it while worker %d (token %d) was still inside with a live context",
				k, first.Worker, first.Token, cur.Worker, cur.Token)
			if first.Token < cur.Token {
				what += " (its own lease was older: it had expired when its Acquire returned)"
			}
			if len(entered) > 1 {
				what += fmt.Sprintf(", and %d more holders after it", len(entered)-1)
			}
			what += fmt.Sprintf(": %v of overlap", overlap.Round(time.Microsecond))
			out = append(out, Violation{Key: k, At: first.Taken, What: what})
			entered, overlap = nil, 0
		}
		for i := range ts {
			t := &ts[i]
			if t.End() <= t.Taken {
				// Dead on arrival (its context had ended when Acquire
				// returned): never held live, it cannot overlap.
				continue
			}
			if cur != nil && t.Taken < cur.End() {
				d := time.Duration(min(t.End(), cur.End()) - t.Taken)
				*longest = max(*longest, d)
				overlap += d
				entered = append(entered, t)
			}
			if cur == nil || t.End() > cur.End() {
				flush()
				cur = t
			}
		}
		flush()
	}
	sortViolations(out)
	return out
}

// checkTokenOrder checks that each successful take's token is higher than
// that of every take that returned before it was called, and unique.
func checkTokenOrder(ops []Op) []Violation {
	byKey := map[int][]Op{}
	for _, op := range ops {
		if op.Kind == Take && op.Outcome == OK {
			byKey[op.Key] = append(byKey[op.Key], op)
		}
	}
	var out []Violation
	for k, ts := range byKey {
		byRet := append([]Op(nil), ts...)
		sort.Slice(byRet, func(i, j int) bool { return byRet[i].Return < byRet[j].Return })
		sort.Slice(ts, func(i, j int) bool { return ts[i].Call < ts[j].Call })
		seen := map[uint64]Op{}
		var high Op // the highest token among takes returned so far
		j := 0
		for _, t := range ts {
			for j < len(byRet) && byRet[j].Return < t.Call {
				if byRet[j].Token > high.Token {
					high = byRet[j]
				}
				j++
			}
			if high.Lease != 0 && t.Token <= high.Token {
				out = append(out, Violation{Key: k, At: t.Call, From: high.Return, What: fmt.Sprintf(
					"key %d: worker %d took token %d after worker %d had taken token %d", k, t.Worker, t.Token, high.Worker, high.Token)})
			} else if o, dup := seen[t.Token]; dup {
				out = append(out, Violation{Key: k, At: t.Call, What: fmt.Sprintf(
					"key %d: workers %d and %d both took token %d", k, o.Worker, t.Worker, t.Token)})
			}
			seen[t.Token] = t
		}
	}
	sortViolations(out)
	return out
}

// checkLoss measures how each lost lease's loss was reported, and finds
// losses reported after another holder took the key, and losses never
// reported (the release found the lease gone while its context was live).
func checkLoss(r *Result, latencies *[]time.Duration, expired *int) []Violation {
	ttl := int64(r.Config.Backend.TTL)
	byLease := map[uint64][]Op{}
	all := map[uint64][]Op{}
	takesByKey := map[int][]Op{}
	for _, op := range r.Records.Ops {
		if op.Lease != 0 {
			all[op.Lease] = append(all[op.Lease], op)
		}
		if op.Outcome != OK || op.Kind == Release {
			continue
		}
		byLease[op.Lease] = append(byLease[op.Lease], op)
		if op.Kind == Take {
			takesByKey[op.Key] = append(takesByKey[op.Key], op)
		}
	}
	// lastRenew returns the call of the lease's last successful take or
	// refresh before a moment.
	lastRenew := func(lease uint64, before int64) int64 {
		var last int64
		for _, op := range byLease[lease] {
			if op.Call <= before && op.Call > last {
				last = op.Call
			}
		}
		return last
	}
	for _, ts := range takesByKey {
		sort.Slice(ts, func(i, j int) bool { return ts[i].Return < ts[j].Return })
	}
	var out []Violation
	for _, t := range r.Records.Takes {
		switch {
		case t.Lost != 0:
			bound := lastRenew(t.Lease, t.Lost) + ttl
			if t.Taken >= bound {
				// Acquire returned after the lease's TTL had run out (a
				// slow or stalled take): its holder learnt at once.
				*expired++
			} else {
				*latencies = append(*latencies, time.Duration(t.Lost-bound))
			}
			// The first take of the key by another lease after this one.
			ts := takesByKey[t.Key]
			i := sort.Search(len(ts), func(i int) bool { return ts[i].Return > t.Taken })
			for ; i < len(ts); i++ {
				if ts[i].Lease != t.Lease {
					break
				}
			}
			if i < len(ts) && ts[i].Return < t.Lost {
				n := ts[i]
				out = append(out, Violation{Key: t.Key, At: n.Return, What: fmt.Sprintf(
					"key %d: worker %d (token %d) learnt of its loss %v after worker %d took the key (token %d)",
					t.Key, t.Worker, t.Token, time.Duration(t.Lost-n.Return).Round(time.Microsecond), n.Worker, n.Token)})
			}
		case t.Release == Refused && !t.Stalled:
			// The release found the lease gone. That is a loss nobody
			// reported only if the lease had to be there still: the
			// release returned before its TTL ran out from its last
			// renewal's call (else it may have expired after the critical
			// section, while the release waited for a renewal in flight
			// or its request crossed a slow network).
			var call, ret int64
			for _, op := range all[t.Lease] {
				if op.Kind == Release {
					call, ret = op.Call, op.Return
				}
			}
			if ret < lastRenew(t.Lease, call)+ttl {
				out = append(out, Violation{Key: t.Key, At: t.Exit, What: fmt.Sprintf(
					"key %d: worker %d (token %d) left its critical section with a live context, and its release, before the TTL ran out, found the lease gone (%s)",
					t.Key, t.Worker, t.Token, story(all[t.Lease], t.Taken))})
			}
		}
	}
	sortViolations(out)
	return out
}

// story tells what happened to a lease, in times relative to ref.
func story(ops []Op, ref int64) string {
	var parts []string
	for _, op := range ops {
		s := fmt.Sprintf("%s [%+.3fs, %+.3fs] %s", op.Kind, time.Duration(op.Call-ref).Seconds(), time.Duration(op.Return-ref).Seconds(), op.Outcome)
		if op.Err != "" {
			s += " (" + op.Err + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// livenessBound is the longest a key may stay untaken after a heal: a
// lease orphaned by the fault expires within TTL plus slack, a surviving
// holder may finish its longest hold, and a waiter needs a moment to see it.
func livenessBound(cfg Config) time.Duration {
	hold := cfg.Workload.LongHold
	if n := cfg.Workload.Writes - 1; n > 0 {
		hold = max(hold, 3*cfg.Workload.Hold*time.Duration(n)/2)
	}
	return cfg.Backend.TTL + cfg.Backend.Slack + hold + time.Second
}

// checkLiveness measures, after each heal, how long each key took to be
// taken again, and reports keys stuck beyond bound.
func checkLiveness(r *Result, bound time.Duration, recovery *[]time.Duration) []Violation {
	takes := map[int][]int64{} // key → returns of successful takes, sorted
	for _, op := range r.Records.Ops {
		if op.Kind == Take && op.Outcome == OK {
			takes[op.Key] = append(takes[op.Key], op.Return)
		}
	}
	for _, ts := range takes {
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
	}
	var out []Violation
	for i, w := range r.Faults {
		next := r.End
		if i+1 < len(r.Faults) {
			next = r.Faults[i+1].Inject
		}
		for k := range r.Config.Workload.Keys {
			ts := takes[k]
			j := sort.Search(len(ts), func(j int) bool { return ts[j] > w.Heal })
			if j < len(ts) && ts[j] <= next {
				d := time.Duration(ts[j] - w.Heal)
				*recovery = append(*recovery, d)
				if d > bound {
					out = append(out, Violation{Key: k, At: w.Heal, What: fmt.Sprintf("key %d was first taken %v after the heal of %q (bound %v)", k, d.Round(time.Millisecond), w.Name, bound)})
				}
				continue
			}
			if time.Duration(next-w.Heal) > bound {
				out = append(out, Violation{Key: k, At: w.Heal, What: fmt.Sprintf("key %d was not taken in the %v between the heal of %q and the next fault", k, time.Duration(next-w.Heal).Round(time.Millisecond), w.Name)})
			}
		}
	}
	return out
}

func sortViolations(vs []Violation) {
	sort.Slice(vs, func(i, j int) bool { return vs[i].At < vs[j].At })
}

// Percentile returns the p-th percentile (0-100) of ds, or 0 for none.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p / 100 * float64(len(s)-1))
	return s[i]
}

// writeHistory writes every fault window and lock operation of a run, one a
// line, and returns the file's path ("" if it could not).
func writeHistory(r *Result, dir, name string) string {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ""
	}
	path := filepath.Join(dir, name+"-history.txt")
	f, err := os.Create(path)
	if err != nil {
		return ""
	}
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "# run of %v; times since its start; lease ids: worker+1 in the high 32 bits\n", time.Duration(r.End-r.Start))
	for _, fw := range r.Faults {
		fmt.Fprintf(w, "fault %q injected %v, healed %v %s\n", fw.Name, time.Duration(fw.Inject-r.Start), time.Duration(fw.Heal-r.Start), fw.Err)
	}
	for _, op := range r.Records.Ops {
		fmt.Fprintf(w, "[%v, %v] worker %d key %d %s lease %x token %d -> %s %s\n",
			time.Duration(op.Call-r.Start), time.Duration(op.Return-r.Start), op.Worker, op.Key, op.Kind, op.Lease, op.Token, op.Outcome, op.Err)
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		return ""
	}
	return path
}
