package torture

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestCheckFenced(t *testing.T) {
	w := func(lease, token uint64, ok bool) WriteRecord {
		return WriteRecord{Write: Write{Key: 0, Lease: lease, Token: token}, Accepted: ok}
	}
	var stale int
	// Lease 2 (token 2) writes between two writes of lease 1 (token 2):
	// one token for two leases let them interleave.
	got := checkFenced([]WriteRecord{w(1, 2, true), w(2, 2, true), w(1, 2, true), w(3, 1, false)}, &stale)
	if len(got) != 1 || !strings.Contains(got[0].What, "interleaved") {
		t.Errorf("interleaved writes: got %v", got)
	}
	if stale != 1 {
		t.Errorf("stale writes: got %d, want 1", stale)
	}
	stale = 0
	if got := checkFenced([]WriteRecord{w(1, 1, true), w(1, 1, true), w(2, 2, true), w(1, 1, false)}, &stale); len(got) != 0 {
		t.Errorf("a fenced history: got %v", got)
	}
}

func TestCheckExclusionAndTokenOrder(t *testing.T) {
	takes := []TakeRecord{
		{Lease: 1, Worker: 1, Token: 1, Taken: 0, Exit: 100},
		{Lease: 2, Worker: 2, Token: 2, Taken: 50, Exit: 60},              // inside 1's window
		{Lease: 3, Worker: 3, Token: 3, Taken: 70, Exit: 80},              // still inside 1's
		{Lease: 4, Worker: 4, Token: 4, Taken: 200, Exit: 300},            // alone
		{Lease: 5, Worker: 5, Token: 1, Taken: 250, Done: 250, Exit: 260}, // dead on arrival inside 4's: never live
	}
	var longest time.Duration
	ex := checkExclusion(takes, &longest)
	if len(ex) != 1 || !strings.Contains(ex[0].What, "1 more holders") || longest != 10 {
		t.Errorf("exclusion: got %v, longest %v", ex, longest)
	}
	ops := []Op{
		{Kind: Take, Outcome: OK, Lease: 1, Token: 5, Call: 0, Return: 10},
		{Kind: Take, Outcome: OK, Lease: 2, Token: 3, Call: 20, Return: 30}, // lower, after 1 returned
		{Kind: Take, Outcome: OK, Lease: 3, Token: 4, Call: 5, Return: 40},  // concurrent with 1: not judged by order
	}
	if got := checkTokenOrder(ops); len(got) != 1 || got[0].At != 20 {
		t.Errorf("token order: got %v", got)
	}
}

func TestWriteReport(t *testing.T) {
	cells := []Cell{{
		Group: "etcd", Backend: "etcd", Cell: "server paused 7s", Topology: "etcd, private", Test: "^TestTorture$/^etcd$/^server_paused$",
		Takes: 1234, ProcTakes: 600, Faults: []FaultSummary{{Name: "server paused 7s", Count: 2}},
		Checks: []CheckSummary{{Name: CheckFenced}, {Name: CheckLinear, Violations: 1, Examples: []Violation{{What: "key 1: not linearizable", Fault: "server paused 7s"}}}},
		Idem:   &IdemFigures{Keys: 10, Attempts: 12, Answered: 9, Effects: 9, Statuses: map[string]int{"201": 9}},
		Known:  []string{"a known issue"},
	}}
	var b bytes.Buffer
	if err := WriteReport(&b, Machine{Command: "make torture", Cores: 2}, cells); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"| etcd | etcd | 1234 | 600 | 0 |",
		"**violation** under server paused 7s: key 1: not linearizable",
		"- a known issue",
		"-run '^TestTorture$/^etcd$/^server_paused$'",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q:\n%s", want, out)
		}
	}
}
