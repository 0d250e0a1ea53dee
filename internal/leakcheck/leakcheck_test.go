package leakcheck

import (
	"strings"
	"testing"
)

func TestMain(m *testing.M) { VerifyTestMain(m) }

func TestFindsALeftGoroutine(t *testing.T) {
	base := Snapshot()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); <-stop }()
	err := Find(base)
	close(stop)
	<-done
	if err == nil || !strings.Contains(err.Error(), "leakcheck.TestFindsALeftGoroutine.func1") {
		t.Fatalf("Find with a goroutine blocked on a channel: %v, want an error naming it", err)
	}
	if err := Find(base); err != nil {
		t.Fatalf("Find after the goroutine ended: %v", err)
	}
}

func TestWaitsForAnEndingGoroutine(t *testing.T) {
	base := Snapshot()
	start := make(chan struct{})
	go func() { <-start }()
	close(start) // the goroutine may still be alive when Find first looks
	if err := Find(base); err != nil {
		t.Fatalf("Find: %v", err)
	}
}

func TestBaselineIsNotReported(t *testing.T) {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); <-stop }()
	defer func() { close(stop); <-done }()
	if err := Find(Snapshot()); err != nil {
		t.Fatalf("Find with only the baseline's goroutines: %v", err)
	}
	// The zero Baseline reports it; the testing package's are ignored.
	if err := Find(Baseline{}); err == nil || strings.Contains(err.Error(), "testing.(*T).Run") {
		t.Fatalf("Find(Baseline{}): %v, want only the test's goroutine", err)
	}
}

func TestCheck(t *testing.T) {
	rec := &recorder{TB: t}
	Check(rec)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); <-stop }()
	for _, f := range rec.cleanups {
		f()
	}
	close(stop)
	<-done
	if !rec.failed {
		t.Error("Check did not report a goroutine left running")
	}
}

// recorder is a testing.TB that keeps its clean-ups and failures.
type recorder struct {
	testing.TB
	cleanups []func()
	failed   bool
}

func (r *recorder) Helper()          {}
func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Error(...any)     { r.failed = true }

func TestParse(t *testing.T) {
	const text = `goroutine 7 [chan receive, 2 minutes]:
main.(*server).loop(0xc000010000)
	/src/main.go:12 +0x25
created by main.start in goroutine 1
	/src/main.go:8 +0x4a

goroutine 1 [running]:
main.main()
	/src/main.go:20 +0x1d
`
	gs := parse(text)
	if len(gs) != 2 {
		t.Fatalf("parsed %d goroutines, want 2", len(gs))
	}
	g := gs[0]
	if g.id != 7 || g.state != "chan receive, 2 minutes" || g.top != "main.(*server).loop" || g.funcs["main.start"] {
		t.Errorf("parsed %+v", g)
	}
	if gs[1].id != 1 || gs[1].state != "running" || gs[1].top != "main.main" {
		t.Errorf("parsed %+v", gs[1])
	}
}
