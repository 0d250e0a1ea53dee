package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/idemlock/lock/bench"
)

// scalingGroups are the Scaling benchmarks, one per number of waiters,
// each running handoffs hand-offs per library and round.
// checkScalingHandoffs rejects fewer than 2 hand-offs per Scaling
// benchmark: go test reports a -benchtime=1x benchmark from its
// one-iteration calibration run, which skips the Scaling workloads'
// quiescence and warm-up, so the report would show start-up costs as a
// hot key's.
func checkScalingHandoffs(n int) error {
	if n < 2 {
		return fmt.Errorf("-scaling-handoffs %d: at least 2 (a one-hand-off run is go test's calibration run, which skips the quiescence and the warm-up)", n)
	}
	return nil
}

func scalingGroups(handoffs int) []group {
	var gs []group
	for _, n := range bench.ScalingWaiters {
		gs = append(gs, group{"BenchmarkScaling" + strconv.Itoa(n), strconv.Itoa(handoffs) + "x"})
	}
	return gs
}

// scalingWorkload names the Scaling workload with n waiters as it appears
// in the results.
func scalingWorkload(n int) string { return "Scaling" + strconv.Itoa(n) }

// eachScaling calls fn for every Scaling series, in report order.
func eachScaling(fn func(be bench.Backend, lib bench.Lib, n int, k key)) {
	for _, be := range bench.Backends() {
		for _, lib := range be.Libs {
			if !bench.Scales(be, lib) {
				continue
			}
			for _, n := range bench.ScalingWaiters {
				fn(be, lib, n, key{scalingWorkload(n), be.Name, lib.Name})
			}
		}
	}
}

// missingScaling lists the Scaling series the results lack.
func (res *results) missingScaling() []string {
	var missing []string
	eachScaling(func(_ bench.Backend, _ bench.Lib, _ int, k key) {
		if res.values[k] == nil {
			missing = append(missing, k.workload+"/"+k.backend+"/"+k.lib)
		}
	})
	return missing
}

// scalingSection writes the scaling table: per backend and library, and
// per number of waiters, requests per hand-off, hand-off p50 and p99, and
// fairness.
func (res *results) scalingSection(b *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## Hot keys: hand-off as waiters grow\n\n")
	if res.scalingLink != "" {
		p("![Hand-off latency with 8, 64 and 512 waiters per key: p50 and p99 bars on a log scale](%s)\n\n", res.scalingLink)
	}
	p("The hand-off workload above with %s waiters on one key, sharing %d clients (as %d processes with many waiting goroutines each would have: one waiter per client at 8, 64 per client at 512). ",
		joinInts(bench.ScalingWaiters), bench.ScalingClients, bench.ScalingClients)
	p("Goals (issue 19): at most 3 requests per hand-off on every notifying backend, flat from 8 to 512 waiters; fairness min/max ≥ 0.8 at 8 waiters; p50 at 8 waiters no worse than the plain hand-off's; p99 at 512 waiters at most 3× its value at 8. ")
	p("idemlock-queued is idemlock with the backend's queued waiting (lock.Queuer): a release wakes only the head of the key's queue (on PostgreSQL it hands the key straight to the head). ")
	p("Before the run each client takes and releases %d keys at once, so that every pooled connection has prepared its statements. ", bench.WarmConns())
	p("The measured hand-offs are those of a hot key in its steady state, the same way for every library. ")
	p("First the holder keeps the key until the waiters, who all begin waiting at once, have finished their first attempts and their libraries have cleaned up after that burst: until the load meter has counted at most one request per client in each of %d consecutive windows of %v (%v: longer than the 250 ms at which consullock renews the sessions it keeps idle at the bench's 30 s TTL, so that the renewals of the sessions the burst left surplus show in one of them until its pool has destroyed those) and, on etcd and PostgreSQL, the server has answered every request it received; at most %v, which a library whose waiters poll, or wait inside the server as pg_advisory_lock does, always takes. ",
		bench.QuietWindows, bench.QuietWindow, time.Duration(bench.QuietWindows)*bench.QuietWindow, bench.MaxQuiesce)
	least := fmt.Sprintf("at least %d hand-offs; a few dozen where waiters are woken at random", bench.ScalingClients)
	if res.windowed() {
		least = fmt.Sprintf("and at least %d hand-offs, so that every library's window starts as deep into the run: queued PostgreSQL hand-offs still took about twice their steady time in the hand-offs after each of the %d clients took once", bench.MinWarmUp, bench.ScalingClients)
	}
	p("Then the key goes round, unmeasured, until every one of the %d clients has taken it once since (%s, and up to a few hundred on etcd at 512 queued waiters, whose queue holds one client's waiters in runs): after that long hold a client's first take pays what a hot key's would not (on etcd, every client's pooled lease is older than the 1 s TTL slack, and its first take renews it in line; on Consul, it takes the pool's last idle session, and the pool creates a spare), and what is left of the clean-up after the start-up falls in these hand-offs. ",
		bench.ScalingClients, least)
	p("That start-up (first attempts, queue entries, watches, subscriptions, surplus sessions) is a one-off cost per waiter or client, counted in no hand-off. ")
	if res.windowed() {
		p("Then the hand-offs are measured, from the first release after the warm-up to the last take: at least %s, and on a backend whose libraries send requests by the clock while a key is hot, as many more as it takes for the window to span %d of their periods (%s), since the warm-up has just renewed what they renew (go test's one-hand-off calibration run, which is not reported, skips the quiescence, the warm-up and that span); the measured column is the median number of measured hand-offs. ",
			res.opsIn(scalingWorkload(bench.ScalingWaiters[0])), bench.WindowPeriods, backgroundPeriods())
		p("Requests per hand-off include those background requests, which a hot key pays all the time (on etcd, a client's lease renewal about once per TTL slack and lease keep-alives; on Consul, the renewals of each client's idle sessions every 250 ms); they grow per hand-off as hand-offs slow down. A window that starts just after every client's renewal and spans %d periods counts at least half of the renewals due over its span (a shorter one may count none); requests on periods longer than the window (keep-alives every third of the 30 s TTL) are counted only where they happen to fall in it. ", bench.WindowPeriods)
	} else {
		p("Then %s hand-offs are measured, from the first release after the warm-up to the last take (go test's one-hand-off calibration run, which is not reported, skips the quiescence and the warm-up). ", res.opsIn(scalingWorkload(bench.ScalingWaiters[0])))
		p("Requests per hand-off include the libraries' background requests that fall due meanwhile, which a hot key pays all the time (on etcd, a client's lease renewal about once per TTL slack and lease keep-alives; on Consul, the renewals of each client's idle sessions every 250 ms); they grow per hand-off as hand-offs slow down, and a window shorter than their period may catch none of them (at 8 waiters etcd's 60 hand-offs take well under its 1 s TTL slack, so most rounds count no lease renewal there: its figure at 8 is low by up to about 0.1). ")
	}
	p("At 64 and 512 waiters a run's hand-offs are fewer than its waiters, or not many more, so some waiters never get a turn and min/max is 0 whatever the library; fairness is judged at 8. ")
	p("Where the meter tells requests apart (etcd by gRPC method, Consul by endpoint and transaction verbs), the last column splits the requests per hand-off by kind (medians over rounds); the warm-up column is the median number of unmeasured hand-offs before them.\n\n")
	p("| Backend | Library | waiters | requests per hand-off | hand-off p50 | hand-off p99 | fairness: cv, min/max | warm-up | measured | of which |\n|---|---|---|---|---|---|---|---|---|---|\n")
	eachScaling(func(be bench.Backend, lib bench.Lib, n int, k key) {
		cell := func(unit string, f func(float64) string) string {
			if s, ok := res.get(k, unit); ok {
				return f(s.med)
			}
			return "—"
		}
		fair := "—"
		if cv, ok := res.get(k, "acq-cv"); ok {
			mm, _ := res.get(k, "acq-min/max")
			fair = fmt.Sprintf("%.2f, %.2f", cv.med, mm.med)
		}
		count := func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
		measured := cell("handoffs", count)
		if measured == "—" { // results from before the window's minimum span: go test's iterations
			measured = cell("iterations", count)
		}
		p("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", be.Name, lib.Name, n,
			cell("req/handoff", sig3), cell("ns/handoff-p50", fmtDur), cell("ns/handoff-p99", fmtDur), fair,
			cell("warmup-handoffs", count), measured, res.parts(k))
	})
	p("\n")
}

// windowed reports whether the results come from Scaling runs whose
// window spans the backend's background period (they report handoffs).
func (res *results) windowed() bool {
	var yes bool
	eachScaling(func(_ bench.Backend, _ bench.Lib, _ int, k key) {
		yes = yes || res.values[k]["handoffs"] != nil
	})
	return yes
}

// backgroundPeriods lists the backends' background periods and the
// windows' least span ("etcd 1s: 2s; consul 250ms: 500ms").
func backgroundPeriods() string {
	var out []string
	for _, be := range bench.Backends() {
		if be.Background > 0 {
			out = append(out, fmt.Sprintf("%s every %v: at least %v", be.Name, be.Background, bench.WindowPeriods*be.Background))
		}
	}
	return strings.Join(out, "; ")
}

// parts lists k's requests per hand-off by kind ("Txn 2.99, Watch 0.01"),
// each the median over rounds, or "—" when its meter tells no kinds.
func (res *results) parts(k key) string {
	var names []string
	for unit := range res.values[k] {
		if name, ok := strings.CutPrefix(unit, partUnit); ok {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "—"
	}
	slices.Sort(names)
	out := make([]string, len(names))
	for i, name := range names {
		// A round whose breakdown lacks the kind sent none of it.
		var vs []float64
		for r := range res.values[k]["req/handoff"] {
			vs = append(vs, res.values[k][partUnit+name][r])
		}
		out[i] = fmt.Sprintf("%s %.2f", name, summarize(vs).med)
	}
	return strings.Join(out, ", ")
}

// writeScalingChart draws the Scaling hand-off latencies, one bar pair per
// library and number of waiters.
func writeScalingChart(path string, res *results) error {
	var rows []chartRow
	eachScaling(func(be bench.Backend, lib bench.Lib, n int, k key) {
		p50, ok1 := res.get(k, "ns/handoff-p50")
		p99, ok2 := res.get(k, "ns/handoff-p99")
		if ok1 && ok2 {
			rows = append(rows, chartRow{be.Name, lib.Name, fmt.Sprintf("%s, %d waiters", lib.Name, n), p50, p99})
		}
	})
	if len(rows) == 0 {
		return fmt.Errorf("no scaling results")
	}
	return drawChart(path, res, rows,
		"Hot key: hand-off latency as waiters grow (8, 64, 512 waiters on one key)",
		fmt.Sprintf("median over %d rounds, log scale; whisker: p50's range over rounds; waiters share %d clients", len(res.rounds), bench.ScalingClients))
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}
