// Command report runs idemlock's benchmarks against the peer libraries in
// interleaved rounds and writes BENCHMARKS.md and the hand-off chart.
//
// From bench/, with the servers running and their addresses exported
// (`make bench` does all of it):
//
//	go run ./cmd/report                     # run 6 rounds, write the report
//	go run ./cmd/report -read results.txt   # only regenerate from saved output
//
// Each round runs every workload once, for every backend and library (the
// libraries' order rotates from round to round), so each ratio compares
// figures measured minutes apart at most, and the spread over rounds shows
// how much the machine's noise moves them. Output is `go test -bench`
// text: benchstat reads results.txt as it is (use -ignore round).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/idemlock/lock/bench"
)

// group is one workload: a top-level benchmark and how long each of its
// sub-benchmarks runs.
type group struct {
	bench     string // BenchmarkX
	benchtime string
}

func main() {
	var (
		rounds    = flag.Int("rounds", 6, "rounds to run (benchstat needs 6 for a 95% confidence interval)")
		read      = flag.String("read", "", "read this results file instead of running the benchmarks")
		raw       = flag.String("raw", "results.txt", "where to save the raw go test output")
		out       = flag.String("out", "../BENCHMARKS.md", "the report to write")
		chart     = flag.String("chart", "handoff.png", "the hand-off chart to write")
		chartLink = flag.String("chart-link", "bench/handoff.png", "the chart's path as linked from the report")
		timeT     = flag.String("benchtime", "200ms", "-benchtime of TakeRelease and Throughput")
		handoffs  = flag.Int("handoffs", 100, "hand-offs per Handoff benchmark and round")
		rtOps     = flag.Int("roundtrip-ops", 100, "take + release pairs per RoundTrips benchmark")
		scaling   = flag.Int("scaling-handoffs", 60, "hand-offs per Scaling benchmark and round")
		scaleOut  = flag.String("scaling-chart", "scaling.png", "the scaling chart to write")
		scaleLink = flag.String("scaling-chart-link", "bench/scaling.png", "the scaling chart's path as linked from the report")
	)
	flag.Parse()
	log := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "report: "+format+"\n", args...) }

	if *read == "" {
		if err := checkScalingHandoffs(*scaling); err != nil {
			log("%v", err)
			os.Exit(2)
		}
		groups := []group{
			{"BenchmarkTakeRelease", *timeT},
			{"BenchmarkThroughput", *timeT},
			{"BenchmarkHandoff", strconv.Itoa(*handoffs) + "x"},
			{"BenchmarkRoundTrips", strconv.Itoa(*rtOps) + "x"},
		}
		groups = append(groups, scalingGroups(*scaling)...)
		if err := runAll(*rounds, groups, *raw, log); err != nil {
			log("%v", err)
			os.Exit(1)
		}
		*read = *raw
	}
	f, err := os.Open(*read)
	if err != nil {
		log("%v", err)
		os.Exit(1)
	}
	res, err := parse(f)
	f.Close()
	if err != nil {
		log("parsing %s: %v", *read, err)
		os.Exit(1)
	}
	if err := res.complete(); err != nil {
		log("%s: %v", *read, err)
		os.Exit(1)
	}
	if err := writeChart(*chart, res); err != nil {
		log("chart: %v", err)
		os.Exit(1)
	}
	if err := writeScalingChart(*scaleOut, res); err != nil {
		log("scaling chart: %v", err)
		os.Exit(1)
	}
	res.scalingLink = *scaleLink
	md := res.markdown(*chartLink, filepath.Base(*read))
	if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
		log("%v", err)
		os.Exit(1)
	}
	log("wrote %s and %s from %d round(s)", *out, *chart, len(res.rounds))
}

// runAll builds the test binary once and runs every group in every round,
// writing the output to raw (and a progress line per benchmark to stderr).
func runAll(rounds int, groups []group, raw string, log func(string, ...any)) error {
	if os.Getenv("IDEMLOCK_REQUIRE_SERVERS") == "" {
		// A report must cover every backend: a missing server is a failure.
		os.Setenv("IDEMLOCK_REQUIRE_SERVERS", "1")
	}
	dir, err := os.MkdirTemp("", "idemlock-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "bench.test")
	log("building the benchmarks")
	build := exec.Command("go", "test", "-c", "-o", bin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go test -c: %w", err)
	}
	out, err := os.Create(raw)
	if err != nil {
		return err
	}
	defer out.Close()
	start := time.Now()
	for r := 1; r <= rounds; r++ {
		for _, g := range groups {
			log("round %d/%d: %s (-benchtime %s), %s elapsed", r, rounds, g.bench, g.benchtime, time.Since(start).Round(time.Second))
			cmd := exec.Command(bin, "-test.run", "^$", "-test.bench", "^"+g.bench+"$",
				"-test.benchtime", g.benchtime, "-test.benchmem", "-test.timeout", "20m")
			cmd.Env = append(os.Environ(), bench.EnvRound+"="+strconv.Itoa(r))
			cmd.Stderr = os.Stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				return err
			}
			if err := cmd.Start(); err != nil {
				return err
			}
			var bad []string
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				line := sc.Text()
				fmt.Fprintln(out, line)
				switch {
				case len(bad) > 0 && len(bad) < 40:
					bad = append(bad, line) // the context of a failure or skip
				case strings.HasPrefix(line, "Benchmark"):
					fmt.Fprintln(os.Stderr, "  "+compact(line))
				case strings.Contains(line, "--- SKIP"), strings.Contains(line, "--- FAIL"),
					strings.HasPrefix(line, "FAIL"), strings.HasPrefix(line, "panic:"):
					bad = append(bad, line)
				}
			}
			err = cmd.Wait()
			if len(bad) > 0 || err != nil {
				return fmt.Errorf("round %d, %s failed (%v):\n%s", r, g.bench, err, strings.Join(bad, "\n"))
			}
		}
	}
	log("ran %d rounds in %s", rounds, time.Since(start).Round(time.Second))
	return nil
}

// compact shortens a benchmark line for progress output.
func compact(line string) string {
	return strings.Join(strings.Fields(line), " ")
}

// ---------------------------------------------------------------- parsing

// key names one measured series.
type key struct {
	workload, backend, lib string
}

// results holds every figure by series, unit and round.
type results struct {
	config      map[string]string                  // the last value of each config line
	rounds      []int                              // in order of appearance
	values      map[key]map[string]map[int]float64 // series → unit → round → value
	breakdown   map[key]string                     // RoundTrips breakdown log lines
	scalingLink string                             // the scaling chart, as linked from the report
}

var (
	benchLine = regexp.MustCompile(`^Benchmark(\w+)/backend=([\w-]+)/lib=([\w-]+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)
	confLine  = regexp.MustCompile(`^([a-z][^\s:A-Z]*):\s*(.*)$`)
	breakLine = regexp.MustCompile(`^\s+\S+\.go:\d+: breakdown (\w+)/([\w-]+): (.*)$`)
	// A hand-off workload's breakdown, logged under its "--- BENCH:" line.
	handoffBreakLine = regexp.MustCompile(`^\s+\S+\.go:\d+: breakdown \S+ per hand-off: (.*)$`)
	benchHeader      = regexp.MustCompile(`^--- BENCH: Benchmark(\w+)/backend=([\w-]+)/lib=([\w-]+?)(?:-\d+)?$`)
)

// partUnit prefixes the units that hold a hand-off's requests of one kind
// (from its breakdown line), as "part:Txn".
const partUnit = "part:"

func parse(r io.Reader) (*results, error) {
	res := &results{config: map[string]string{}, values: map[key]map[string]map[int]float64{}, breakdown: map[key]string{}}
	round := 0
	var cur *key // the benchmark whose log lines follow
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := benchLine.FindStringSubmatch(line); m != nil {
			k := key{m[1], m[2], m[3]}
			f := append(strings.Fields(m[5]), m[4], "iterations")
			for i := 0; i+1 < len(f); i += 2 {
				v, err := strconv.ParseFloat(f[i], 64)
				if err != nil {
					return nil, fmt.Errorf("bad value %q in %q", f[i], line)
				}
				if res.values[k] == nil {
					res.values[k] = map[string]map[int]float64{}
				}
				if res.values[k][f[i+1]] == nil {
					res.values[k][f[i+1]] = map[int]float64{}
				}
				res.values[k][f[i+1]][round] = v
			}
			continue
		}
		if m := benchHeader.FindStringSubmatch(line); m != nil {
			cur = &key{m[1], m[2], m[3]}
			continue
		}
		if m := handoffBreakLine.FindStringSubmatch(line); m != nil && cur != nil {
			for _, f := range strings.Fields(m[1]) {
				name, v, ok := strings.Cut(strings.TrimPrefix(f, "req:"), "=")
				n, err := strconv.ParseFloat(v, 64)
				if !ok || err != nil {
					return nil, fmt.Errorf("bad breakdown part %q in %q", f, line)
				}
				unit := partUnit + name
				if res.values[*cur] == nil {
					res.values[*cur] = map[string]map[int]float64{}
				}
				if res.values[*cur][unit] == nil {
					res.values[*cur][unit] = map[int]float64{}
				}
				res.values[*cur][unit][round] = n
			}
			continue
		}
		if m := breakLine.FindStringSubmatch(line); m != nil {
			res.breakdown[key{"RoundTrips", m[1], m[2]}] = m[3]
			continue
		}
		if m := confLine.FindStringSubmatch(line); m != nil {
			res.config[m[1]] = m[2]
			if m[1] == "round" {
				n, err := strconv.Atoi(m[2])
				if err != nil {
					return nil, fmt.Errorf("bad round %q", m[2])
				}
				round = n
				if !slices.Contains(res.rounds, n) {
					res.rounds = append(res.rounds, n)
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(res.values) == 0 {
		return nil, errors.New("no benchmark results")
	}
	if len(res.rounds) == 0 {
		res.rounds = []int{0}
	}
	return res, nil
}

// complete checks that every backend and library has every workload.
func (res *results) complete() error {
	var missing []string
	for _, be := range bench.Backends() {
		for _, lib := range be.Libs {
			for _, w := range []string{"TakeRelease", "Throughput", "Handoff", "RoundTrips"} {
				if lib.HandoffOnly && w != "Handoff" || be.Meter == nil && w == "RoundTrips" {
					continue
				}
				if res.values[key{w, be.Name, lib.Name}] == nil {
					missing = append(missing, w+"/"+be.Name+"/"+lib.Name)
				}
			}
		}
	}
	missing = append(missing, res.missingScaling()...)
	if len(missing) > 0 {
		return fmt.Errorf("no results for %s", strings.Join(missing, ", "))
	}
	return nil
}

// stat is a median with the range over rounds.
type stat struct {
	med, lo, hi float64
	n           int
}

func summarize(vs []float64) stat {
	if len(vs) == 0 {
		return stat{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{med: med, lo: s[0], hi: s[len(s)-1], n: len(s)}
}

// get summarizes one unit of one series over rounds.
func (res *results) get(k key, unit string) (stat, bool) {
	byRound := res.values[k][unit]
	if len(byRound) == 0 {
		return stat{}, false
	}
	var vs []float64
	for _, v := range byRound {
		vs = append(vs, v)
	}
	return summarize(vs), true
}

// ratio summarizes, over the rounds where both were measured, the
// advantage of idemlock over lib in one unit: for a lower-is-better unit
// (times) peer/idemlock, for a higher-is-better one idemlock/peer. Above
// 1 means idemlock did better.
func (res *results) ratio(workload, backend, lib, unit string, higherBetter bool) (stat, bool) {
	idem := res.values[key{workload, backend, "idemlock"}][unit]
	peer := res.values[key{workload, backend, lib}][unit]
	var vs []float64
	for r, iv := range idem {
		pv, ok := peer[r]
		if !ok || iv == 0 || pv == 0 {
			continue
		}
		if higherBetter {
			vs = append(vs, iv/pv)
		} else {
			vs = append(vs, pv/iv)
		}
	}
	if len(vs) == 0 {
		return stat{}, false
	}
	return summarize(vs), true
}

// versions returns the versions of the peer modules linked into this
// program (the bench module's go.mod).
func versions() map[string]string {
	out := map[string]string{}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			v := d.Version
			if d.Replace != nil {
				v = d.Replace.Version
			}
			out[d.Path] = v
		}
	}
	return out
}
