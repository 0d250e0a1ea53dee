// Command torture runs idemlock's torture matrix and writes RELIABILITY.md.
//
// It runs the long version of TestTorture in internal/integration/torture (every backend
// on a private server, under every fault, for at least -takes contended
// takes per backend), collects each cell's summary, and renders the report
// with a description of the machine:
//
//	eval "$(scripts/servers.sh env)"       # the servers' variables (make torture sets them)
//	cd internal/integration
//	go run ./cmd/torture                    # about 45 minutes on a 2-core machine
//	go run ./cmd/torture -from .torture/cells.json   # render again without running (machine.json beside it)
//
// It runs in the repository's root folder wherever it is started (the
// integration module is a module of its own, so `make torture` starts it
// there): the paths of its flags are relative to the root.
//
// Porcupine's visualisations of failing histories are kept in
// .torture/vis. The exit status is 1 if the test failed: a fenced-safety,
// token-order, linearizability or effect-count violation that no documented
// caveat explains, or a run that could not complete.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/idemlock/lock/internal/integration/torture"
	"github.com/idemlock/lock/internal/testenv"
)

func main() {
	out := flag.String("out", "RELIABILITY.md", "the report to write")
	dir := flag.String("dir", ".torture", "where the cells' JSON and the visualisations of failing histories are kept")
	from := flag.String("from", "", "render the report from this JSON of cells instead of running the matrix")
	takes := flag.Int("takes", 100_000, "contended takes per backend")
	run := flag.String("run", "^TestTorture$", "the -run pattern of the torture test (a backend or a cell, to run less)")
	timeout := flag.Duration("timeout", 90*time.Minute, "the test's timeout")
	flag.Parse()
	os.Exit(mainErr(*out, *dir, *from, *takes, *run, *timeout))
}

func mainErr(out, dir, from string, takes int, run string, timeout time.Duration) int {
	start := time.Now()
	status := 0
	// The root is the folder of scripts/servers.sh; the torture package
	// is tested from its module's folder.
	script, err := testenv.Script()
	if err != nil {
		fmt.Fprintln(os.Stderr, "torture:", err)
		return 2
	}
	root := filepath.Dir(filepath.Dir(script))
	if err := os.Chdir(root); err != nil {
		fmt.Fprintln(os.Stderr, "torture:", err)
		return 2
	}
	path := from
	if path == "" {
		if err := os.MkdirAll(filepath.Join(dir, "vis"), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "torture:", err)
			return 2
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "torture:", err)
			return 2
		}
		path = filepath.Join(abs, "cells.json")
		args := []string{"test", "./torture", "-count=1", "-v", "-timeout", timeout.String(), "-run", run,
			"-args", "-torture.long", fmt.Sprintf("-torture.takes=%d", takes),
			"-torture.json=" + path, "-torture.vis=" + filepath.Join(abs, "vis")}
		fmt.Fprintf(os.Stderr, "torture: go %s\n", strings.Join(args, " "))
		cmd := exec.Command("go", args...)
		cmd.Dir = filepath.Join(root, "internal", "integration")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(), "IDEMLOCK_REQUIRE_SERVERS=1")
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "torture: the torture test failed (%v); the report shows what was measured\n", err)
			status = 1
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "torture:", err)
		return 2
	}
	// Paths of visualisations and histories are shown relative to the
	// repository, where the command runs.
	if wd, err := os.Getwd(); err == nil {
		b = bytes.ReplaceAll(b, []byte(wd+string(filepath.Separator)), nil)
	}
	var cells []torture.Cell
	if err := json.Unmarshal(b, &cells); err != nil {
		fmt.Fprintf(os.Stderr, "torture: %s: %v\n", path, err)
		return 2
	}
	// The machine and the run's time are kept beside the cells, so that a
	// report rendered again with -from says where and how long they ran.
	mpath := filepath.Join(filepath.Dir(path), "machine.json")
	var m torture.Machine
	if from != "" {
		if b, err := os.ReadFile(mpath); err == nil {
			_ = json.Unmarshal(b, &m)
		}
	}
	if m.Date == "" {
		m = machine()
		m.Command = "make torture"
		if from == "" {
			m.Took = time.Since(start)
			if b, err := json.MarshalIndent(m, "", "  "); err == nil {
				_ = os.WriteFile(mpath, b, 0o644)
			}
		}
	}
	var buf bytes.Buffer
	if err := torture.WriteReport(&buf, m, cells); err != nil {
		fmt.Fprintln(os.Stderr, "torture:", err)
		return 2
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "torture:", err)
		return 2
	}
	fmt.Fprintf(os.Stderr, "torture: wrote %s (%d cells)\n", out, len(cells))
	return status
}

// machine describes this machine and the servers' versions.
func machine() torture.Machine {
	m := torture.Machine{Date: time.Now().Format("2006-01-02"), Cores: runtime.NumCPU(), CPU: "unknown", Memory: "unknown", Kernel: runtime.GOOS}
	if v, err := exec.Command("go", "version").Output(); err == nil {
		m.Go = strings.TrimSpace(string(v))
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		_ = f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int
				if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err == nil {
					m.Memory = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
				}
			}
		}
	}
	if v, err := exec.Command("uname", "-sr").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(v))
	}
	for _, c := range [][]string{{"redis-server", "--version"}, {"etcd", "--version"}, {"memcached", "-V"}} {
		if v, err := exec.Command(c[0], c[1:]...).Output(); err == nil {
			line, _, _ := strings.Cut(strings.TrimSpace(string(v)), "\n")
			m.Servers = append(m.Servers, line)
		}
	}
	m.Servers = append(m.Servers, "Consul v1.14.11 (MPL-2.0, built from source by scripts/servers.sh)")
	return m
}
