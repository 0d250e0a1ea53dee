package torture

import (
	"time"

	"github.com/anishathalye/porcupine"
)

// Cell is the summary of one run of the torture matrix (a backend under one
// fault, or its idempotency run), as RELIABILITY.md shows it.
type Cell struct {
	Group    string // the backend, for the report's totals
	Backend  string // the topology: the backend on a server or cluster
	Cell     string
	Topology string
	Test     string // the -run pattern of the subtest that produced it
	Faults   []FaultSummary
	// Caveat is the backend's own documented caveat, if it has one.
	Caveat   *FaultSummary `json:",omitempty"`
	Duration time.Duration
	TTL      time.Duration
	Slack    time.Duration

	Workers     int // in all
	ProcWorkers int // of which in worker processes
	Procs       int
	Takes       int
	ProcTakes   int
	QueuedTakes int // by queued waiters' tickets
	Attempts    int
	Ops         int
	Unknown     int
	AcqErrors   int
	AcqError    string `json:",omitempty"` // one of them
	Stale       int    // writes the fence refused

	Checks []CheckSummary

	MaxOverlap    time.Duration
	Losses        int
	LateTakes     int // leases that had expired when Acquire returned
	LossP50       time.Duration
	LossP99       time.Duration
	LossMax       time.Duration
	Recoveries    int
	RecoveryP50   time.Duration
	RecoveryMax   time.Duration
	LivenessBound time.Duration
	LinearKeys    int
	LinearUnknown int // keys whose check ran out of time
	LinearTook    time.Duration
	LinearFiles   []string
	HistoryFile   string `json:",omitempty"`

	Idem *IdemFigures `json:",omitempty"`
	// Known lists the known issues (found here, fixed elsewhere) that
	// explain some of the cell's violations.
	Known []string `json:",omitempty"`
}

// FaultSummary is a fault of a cell and how often it came.
type FaultSummary struct {
	Name   string
	Count  int
	Errors int
	Hits   int64
	Caveat string `json:",omitempty"`
	Breaks []string
}

// CheckSummary is one check's verdict in a cell.
type CheckSummary struct {
	Name string
	// Violations nothing explains, those a known issue explains, and
	// those a fault's caveat explains.
	Violations int
	Known      int
	Caveat     int
	Examples   []Violation
}

// Summarize condenses a report into a cell.
func Summarize(rep *Report, topology string) Cell {
	c := Cell{
		Backend: rep.Backend, Topology: topology, Duration: rep.Duration,
		Workers: rep.Workers, ProcWorkers: rep.ProcWorkers, Procs: rep.Procs, Takes: rep.Takes, ProcTakes: rep.ProcTakes, QueuedTakes: rep.QueuedTakes, Attempts: rep.Attempts,
		Ops: rep.Ops, Unknown: rep.Unknown, AcqErrors: rep.AcquireErrors, AcqError: rep.AcquireError, Stale: rep.Stale,
		MaxOverlap: rep.MaxOverlap, Losses: len(rep.LossLatency), LateTakes: rep.ExpiredOnArrival,
		LossP50: Percentile(rep.LossLatency, 50), LossP99: Percentile(rep.LossLatency, 99), LossMax: Percentile(rep.LossLatency, 100),
		Recoveries: len(rep.Recovery), RecoveryP50: Percentile(rep.Recovery, 50), RecoveryMax: Percentile(rep.Recovery, 100),
		LivenessBound: rep.LivenessBound, LinearKeys: len(rep.LinearResults),
		TTL: rep.TTL, Slack: rep.Slack,
	}
	c.Faults = summarizeFaults(rep.Faults, rep.FaultDefs)
	c.Idem = rep.Idem
	if rep.BackendCaveat != "" {
		c.Caveat = &FaultSummary{Name: rep.Backend + " itself", Caveat: rep.BackendCaveat, Breaks: rep.BackendBreaks}
	}
	c.HistoryFile = rep.HistoryFile
	for _, ch := range rep.Checks() {
		c.Checks = append(c.Checks, summarizeCheck(ch))
	}
	for _, lr := range rep.LinearResults {
		if lr.Result == porcupine.Unknown {
			c.LinearUnknown++
		}
		c.LinearTook += lr.Took
		if lr.File != "" {
			c.LinearFiles = append(c.LinearFiles, lr.File)
		}
	}
	return c
}

func summarizeCheck(ch *CheckResult) CheckSummary {
	s := CheckSummary{Name: ch.Name}
	var fails, known, caveats []Violation
	for _, v := range ch.Violations {
		switch {
		case v.Caveat:
			s.Caveat++
			caveats = append(caveats, v)
		case v.Known != "":
			s.Known++
			known = append(known, v)
		default:
			s.Violations++
			fails = append(fails, v)
		}
	}
	s.Examples = append(append(fails[:min(3, len(fails))], known[:min(2, len(known))]...), caveats[:min(2, len(caveats))]...)
	return s
}

func summarizeFaults(ws []FaultWindow, defs []Fault) []FaultSummary {
	byName := map[string]*FaultSummary{}
	var out []FaultSummary
	for _, f := range defs {
		byName[f.Name] = &FaultSummary{Name: f.Name, Caveat: f.Caveat, Breaks: f.Breaks}
	}
	for _, w := range ws {
		if fs := byName[w.Name]; fs != nil {
			fs.Count++
			fs.Hits += w.Hits
			if w.Err != "" {
				fs.Errors++
			}
		}
	}
	for _, f := range defs {
		out = append(out, *byName[f.Name])
	}
	return out
}
