package main

import (
	"os"
	"strings"
	"testing"
)

func run(t *testing.T, input string) (*result, string) {
	t.Helper()
	var out strings.Builder
	r := check(strings.NewReader(input), &out)
	return r, out.String()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// mixed.json is real `go test -json` output of a module with a passing, a
// failing, a skipped and an "optional capability" skipped test, a package
// that does not build and a test that calls os.Exit.
func TestMixedRunFails(t *testing.T) {
	in, err := os.ReadFile("testdata/mixed.json")
	if err != nil {
		t.Fatal(err)
	}
	r, out := run(t, string(in))
	if r.ok() {
		t.Fatalf("ok() = true for a run with failures\n%s", out)
	}
	if r.passed != 2 || r.failed != 2 || r.skipped != 2 {
		t.Errorf("counts = %d passed, %d failed, %d skipped; want 2, 2, 2", r.passed, r.failed, r.skipped)
	}
	if want := "testcheck: 2 passed, 2 failed, 2 skipped"; lastLine(out) != want {
		t.Errorf("last line = %q, want %q", lastLine(out), want)
	}
	if len(r.allowedSkips) != 1 || !strings.Contains(r.allowedSkips[0], "tc/a.TestOpt/sub") {
		t.Errorf("allowed skips = %q, want only tc/a.TestOpt/sub", r.allowedSkips)
	}
	if len(r.badSkips) != 1 || !strings.Contains(r.badSkips[0], "tc/a.TestSkip: a_test.go:5: IDEMLOCK_X not set") {
		t.Errorf("bad skips = %q, want tc/a.TestSkip with its reason", r.badSkips)
	}
	if len(r.buildFailed) != 1 || !strings.Contains(out, "undefined: undefined") {
		t.Errorf("build failures = %q and output lacks the compiler error:\n%s", r.buildFailed, out)
	}
	if !strings.Contains(out, "tc/c.TestExit (never finished)") {
		t.Errorf("output does not name the test cut off by os.Exit:\n%s", out)
	}
	for _, pkg := range []string{"tc/a", "tc/b", "tc/c"} {
		if !strings.Contains(out, "FAIL\t"+pkg+"\t") {
			t.Errorf("output does not report package %s as failed", pkg)
		}
	}
}

const passing = `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"pass","Package":"p","Test":"TestA","Elapsed":0.1}
{"Action":"run","Package":"p","Test":"TestB"}
{"Action":"output","Package":"p","Test":"TestB","Output":"    suite.go:9: memlock lacks optional capability Refresher\n"}
{"Action":"skip","Package":"p","Test":"TestB","Elapsed":0}
{"Action":"pass","Package":"p","Elapsed":0.2}
{"Action":"skip","Package":"q","Elapsed":0}
`

func TestAllowedSkipPasses(t *testing.T) {
	r, out := run(t, passing)
	if !r.ok() {
		t.Fatalf("ok() = false for a passing run\n%s", out)
	}
	if want := "testcheck: 1 passed, 0 failed, 1 skipped"; lastLine(out) != want {
		t.Errorf("last line = %q, want %q", lastLine(out), want)
	}
}

func TestSkipWithoutMarkerFails(t *testing.T) {
	in := strings.Replace(passing, "optional capability", "server", 1)
	r, out := run(t, in)
	if r.ok() || !strings.Contains(out, "SKIPPED, NOT ALLOWED") {
		t.Errorf("a plain skip did not fail the run:\n%s", out)
	}
}

func TestNoTestsFails(t *testing.T) {
	r, out := run(t, `{"Action":"skip","Package":"q","Elapsed":0}`+"\n")
	if r.ok() || !strings.Contains(out, "no test ran") {
		t.Errorf("a run without tests did not fail:\n%s", out)
	}
}

func TestBuildFailedTextFails(t *testing.T) {
	r, out := run(t, passing+"FAIL\tgithub.com/x/y [build failed]\n")
	if r.ok() || !strings.Contains(out, "[build failed]") {
		t.Errorf("a non-JSON build failure line did not fail the run:\n%s", out)
	}
}

func TestTruncatedInputFails(t *testing.T) {
	in := `{"Action":"run","Package":"p","Test":"TestA"}` + "\n"
	r, out := run(t, passing+in)
	if r.ok() || !strings.Contains(out, "p.TestA (never finished)") {
		t.Errorf("a test without a result did not fail the run:\n%s", out)
	}
}
