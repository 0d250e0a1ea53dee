// Package leakcheck finds goroutines that outlive their owner, from the
// runtime's own stack dump: the suite and the tests need no third-party
// module for it.
//
// A check takes a Snapshot of the goroutines alive before the code under
// test runs and, afterwards, Find reports every goroutine not in it that
// is still alive once a short grace period has passed (a goroutine that is
// ending when its owner returns gets that long to finish). The goroutine
// calling Find, the testing package's own goroutines waiting for tests and
// the runtime's signal and trace goroutines are never reported.
package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Baseline is the set of goroutines alive when it was taken; Find never
// reports them. The zero Baseline is empty.
type Baseline struct{ ids map[int]bool }

// Snapshot returns the goroutines alive now.
func Snapshot() Baseline {
	ids := make(map[int]bool)
	for _, g := range goroutines() {
		ids[g.id] = true
	}
	return Baseline{ids: ids}
}

// Find's grace period: it looks again after 1 µs, 2 µs, 4 µs… (at most
// 100 ms apart) for 20 attempts, about half a second in all, as goleak does.
const (
	attempts = 20
	maxPause = 100 * time.Millisecond
)

// Find returns nil once every goroutine not in base (other than the
// caller's and the runtime's and testing package's own) has ended, or,
// when some are still alive after the grace period, an error listing
// their stacks.
func Find(base Baseline) error {
	self := current()
	var left []goroutine
	for i := 0; ; i++ {
		left = left[:0]
		for _, g := range goroutines() {
			if g.id != self && !base.ids[g.id] && !ignored(g) {
				left = append(left, g)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if i == attempts {
			break
		}
		time.Sleep(min(time.Microsecond<<i, maxPause))
	}
	var b strings.Builder
	b.WriteString("found unexpected goroutines:")
	for _, g := range left {
		fmt.Fprintf(&b, "\nGoroutine %d in state %s, with %s on top of the stack:\n%s", g.id, g.state, g.top, g.stack)
	}
	return fmt.Errorf("%s", b.String())
}

// Check fails t, when its other clean-ups have run, if a goroutine started
// after this call is still alive.
func Check(t testing.TB) {
	t.Helper()
	base := Snapshot()
	t.Cleanup(func() {
		if err := Find(base); err != nil {
			t.Error(err)
		}
	})
}

// VerifyNone fails t if a goroutine other than the caller's and the
// testing package's own is alive (after the grace period): use it with
// defer in a test that runs alone.
func VerifyNone(t testing.TB) {
	t.Helper()
	if err := Find(Baseline{}); err != nil {
		t.Error(err)
	}
}

// VerifyTestMain runs the tests of m and, if they passed, fails the binary
// when a goroutine other than the testing package's own is still alive.
// Use it as the package's TestMain.
func VerifyTestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := Find(Baseline{}); err != nil {
			fmt.Fprintf(os.Stderr, "leakcheck: errors on a successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// goroutine is one goroutine of a stack dump.
type goroutine struct {
	id    int
	state string          // "running", "chan receive", "IO wait, 2 minutes"...
	top   string          // the function at the top of its stack
	funcs map[string]bool // every function on its stack (not its creator)
	stack string          // its whole trace
}

// ignored reports the goroutines that are not the code's: the testing
// package's goroutines waiting for (parallel, fuzz) tests to end, the
// signal-handling and cgo-callback goroutines, and the execution tracer's
// reader.
func ignored(g goroutine) bool {
	switch g.top {
	case "testing.RunTests", "testing.(*T).Run", "testing.(*T).Parallel", "testing.runFuzzing", "testing.runFuzzTests":
		if strings.HasPrefix(g.state, "chan receive") {
			return true
		}
	case "os/signal.signal_recv", "os/signal.loop":
		return true
	}
	return (g.funcs["runtime.goexit"] && strings.HasPrefix(g.state, "syscall")) ||
		g.funcs["runtime.ensureSigM"] || g.funcs["runtime.ReadTrace"]
}

// current returns the calling goroutine's id.
func current() int {
	gs := parse(dump(false))
	if len(gs) == 0 {
		return -1
	}
	return gs[0].id
}

// goroutines returns every goroutine's stack.
func goroutines() []goroutine { return parse(dump(true)) }

// dump returns runtime.Stack's text, in a buffer large enough for it.
func dump(all bool) string {
	for n := 64 << 10; ; n *= 2 {
		buf := make([]byte, n)
		if m := runtime.Stack(buf, all); m < n {
			return string(buf[:m])
		}
	}
}

// parse splits a stack dump into goroutines. A dump is a series of blocks
// separated by blank lines, each a header "goroutine 7 [chan receive]:"
// then, for every frame, a line naming the function and a tab-indented
// line with its file, and last "created by f in goroutine 1" for the
// creator.
func parse(text string) []goroutine {
	var gs []goroutine
	for block := range strings.SplitSeq(strings.TrimSpace(text), "\n\n") {
		header, body, _ := strings.Cut(block, "\n")
		rest, ok := strings.CutPrefix(header, "goroutine ")
		if !ok {
			continue
		}
		idText, state, _ := strings.Cut(rest, " ")
		id, err := strconv.Atoi(idText)
		if err != nil {
			continue
		}
		state = strings.TrimSuffix(strings.TrimPrefix(state, "["), "]:")
		g := goroutine{id: id, state: state, funcs: make(map[string]bool), stack: block}
		for line := range strings.SplitSeq(body, "\n") {
			if line == "" || strings.HasPrefix(line, "\t") || strings.HasPrefix(line, "...") || strings.HasPrefix(line, "created by ") {
				continue
			}
			name := line
			if i := strings.LastIndexByte(line, '('); i > 0 {
				name = line[:i]
			}
			g.funcs[name] = true
			if g.top == "" {
				g.top = name
			}
		}
		gs = append(gs, g)
	}
	return gs
}
