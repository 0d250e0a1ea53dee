package lock_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestOptionsMisappliedDoNotCompile builds the programs under
// testdata/options: each passes an option to a helper it does not apply to
// (lock.Acquire with lock.WithTTL, a Runner with an HTTP option...) and
// must fail to compile for that reason alone; testdata/options/valid uses
// every option where it applies and must compile.
func TestOptionsMisappliedDoNotCompile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds programs")
	}
	dirs, err := filepath.Glob(filepath.Join("testdata", "options", "*"))
	if err != nil || len(dirs) < 2 {
		t.Fatalf("testdata/options: %v %v", dirs, err)
	}
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command("go", "build", "-o", os.DevNull, "./"+filepath.ToSlash(dir))
			out, err := cmd.CombinedOutput()
			if name == "valid" {
				if err != nil {
					t.Fatalf("the valid program does not compile: %v\n%s", err, out)
				}
				return
			}
			if err == nil {
				t.Fatal("a misapplied option compiled")
			}
			if !strings.Contains(string(out), "does not implement") || strings.Count(string(out), "main.go:") != 1 {
				t.Fatalf("want exactly one error, an option of the wrong helper; got:\n%s", out)
			}
		})
	}
}
