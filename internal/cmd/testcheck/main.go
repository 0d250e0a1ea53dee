// Command testcheck reads `go test -json` output on standard input, prints it
// readably and exits non-zero unless every test passed: a failed test, a
// package that failed (build failure, panic, timeout) or a skipped test fails
// the run. The one allowed skip is a test whose output contains the marker
// text "optional capability", which the conformance suite prints for a
// backend that lacks an optional interface.
//
// Usage:
//
//	go test -json ./... | go run ./internal/cmd/testcheck
//
// Its last line is "testcheck: N passed, N failed, N skipped".
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// AllowedSkipMarker is the text that makes a skipped test acceptable.
const AllowedSkipMarker = "optional capability"

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action      string
	Package     string
	Test        string
	Elapsed     float64
	Output      string
	ImportPath  string
	FailedBuild string
}

// result counts and names what a test run did.
type result struct {
	passed, failed, skipped int
	allowedSkips            []string // tests skipped with the marker
	badSkips                []string // tests skipped without it, with the reason
	failedTests             []string
	failedPkgs              []string
	buildFailed             []string
}

// ok reports whether the run passed as a whole.
func (r *result) ok() bool {
	return r.failed == 0 && len(r.badSkips) == 0 && len(r.failedPkgs) == 0 &&
		len(r.buildFailed) == 0 && r.passed > 0
}

func main() {
	r := check(os.Stdin, os.Stdout)
	if !r.ok() {
		os.Exit(1)
	}
}

// check reads events from in, writes the readable report to out and
// returns what it counted.
func check(in io.Reader, out io.Writer) *result {
	r := &result{}
	outputs := map[string][]string{}  // package + " " + test → its output lines
	running := map[string]string{}    // tests started and not finished → package
	buildOut := map[string][]string{} // import path → build output
	failedBuild := map[string]bool{}

	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not an event: something go test printed around the JSON.
			fmt.Fprintf(out, "%s\n", line)
			if strings.Contains(string(line), "[build failed]") {
				r.buildFailed = append(r.buildFailed, string(line))
			}
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "build-output":
			buildOut[e.ImportPath] = append(buildOut[e.ImportPath], e.Output)
		case "build-fail":
			failedBuild[e.ImportPath] = true
			r.buildFailed = append(r.buildFailed, e.ImportPath)
			fmt.Fprintf(out, "BUILD FAILED %s\n%s", e.ImportPath, strings.Join(buildOut[e.ImportPath], ""))
		case "run":
			if e.Test != "" {
				running[key] = e.Package
			}
		case "output":
			outputs[key] = append(outputs[key], e.Output)
		case "pass", "fail", "skip":
			if e.Test == "" {
				r.packageDone(out, e, outputs, running)
			} else {
				delete(running, key)
				r.testDone(out, e, outputs[key])
			}
			delete(outputs, key)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(out, "testcheck: reading input: %v\n", err)
		r.failedPkgs = append(r.failedPkgs, "(input unreadable)")
	}
	for key := range running {
		r.failed++
		r.failedTests = append(r.failedTests, strings.Replace(key, " ", ".", 1)+" (never finished)")
	}
	r.report(out)
	return r
}

// testDone records the end of one test.
func (r *result) testDone(out io.Writer, e event, output []string) {
	name := e.Package + "." + e.Test
	switch e.Action {
	case "pass":
		r.passed++
	case "fail":
		r.failed++
		r.failedTests = append(r.failedTests, name)
		fmt.Fprintf(out, "=== FAILED %s (%.2fs)\n%s", name, e.Elapsed, strings.Join(output, ""))
	case "skip":
		r.skipped++
		text := strings.Join(output, "")
		reason := skipReason(output)
		if strings.Contains(text, AllowedSkipMarker) {
			r.allowedSkips = append(r.allowedSkips, name+": "+reason)
		} else {
			r.badSkips = append(r.badSkips, name+": "+reason)
			fmt.Fprintf(out, "--- SKIP (not allowed): %s: %s\n", name, reason)
		}
	}
}

// packageDone records the end of one package's tests.
func (r *result) packageDone(out io.Writer, e event, outputs map[string][]string, running map[string]string) {
	switch e.Action {
	case "pass":
		// go test's own line, so that a reader of go test output counts
		// the package as tested.
		fmt.Fprintf(out, "ok  \t%s\t%.3fs\n", e.Package, e.Elapsed)
	case "skip":
		// A package without tests gets no line: go test's "[no test
		// files]" reads, to a tool that counts runs, as a run that
		// executed nothing.
	case "fail":
		r.failedPkgs = append(r.failedPkgs, e.Package)
		fmt.Fprintf(out, "FAIL\t%s\t%.3fs\n", e.Package, e.Elapsed)
		// Tests cut off by a crash, os.Exit or the timeout.
		for key, pkg := range running {
			if pkg == e.Package {
				name := strings.Replace(key, " ", ".", 1)
				delete(running, key)
				r.failed++
				r.failedTests = append(r.failedTests, name+" (never finished)")
				fmt.Fprintf(out, "--- NEVER FINISHED: %s\n%s", name, strings.Join(outputs[key], ""))
			}
		}
		// Output outside any test: panics, timeouts, TestMain failures.
		for _, l := range outputs[e.Package+" "] {
			if !strings.HasPrefix(l, "FAIL") && !strings.HasPrefix(l, "ok ") {
				fmt.Fprintf(out, "    %s", l)
			}
		}
	}
}

// skipReason picks the lines a test printed, other than go test's own
// framing, as the reason it was skipped.
func skipReason(output []string) string {
	var lines []string
	for _, l := range output {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		lines = append(lines, t)
	}
	if len(lines) == 0 {
		return "(no reason given)"
	}
	return strings.Join(lines, " | ")
}

// report prints the closing summary; its last line is the count.
func (r *result) report(out io.Writer) {
	list := func(title string, items []string) {
		if len(items) == 0 {
			return
		}
		sort.Strings(items)
		fmt.Fprintf(out, "\n%s (%d):\n", title, len(items))
		for _, it := range items {
			fmt.Fprintf(out, "  %s\n", it)
		}
	}
	list("skipped, allowed (\""+AllowedSkipMarker+"\")", r.allowedSkips)
	list("SKIPPED, NOT ALLOWED", r.badSkips)
	list("FAILED TESTS", r.failedTests)
	list("FAILED PACKAGES", r.failedPkgs)
	list("BUILD FAILURES", r.buildFailed)
	fmt.Fprintln(out)
	if r.passed == 0 && r.failed == 0 {
		fmt.Fprintln(out, "testcheck: FAIL: no test ran")
	} else if !r.ok() {
		fmt.Fprintln(out, "testcheck: FAIL")
	}
	fmt.Fprintf(out, "testcheck: %d passed, %d failed, %d skipped\n", r.passed, r.failed, r.skipped)
}
