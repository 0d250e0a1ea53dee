package torture

import (
	"bufio"
	"bytes"
	"context"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/rpc"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// childEnv holds, in a worker process, the JSON of its childSpec.
const childEnv = "IDEMLOCK_TORTURE_WORKER"

// childSpec tells a worker process what to run.
type childSpec struct {
	URLs        []string // one per worker
	Workload    Workload
	Prefix      string
	Epoch       int64  // the coordinator's clock epoch
	Resource    string // the resource's RPC address
	Proc        int
	FirstWorker int
	Seed        uint64
}

// IsChild reports whether this process was started as a torture worker
// process; its main (or TestMain) must then call [ChildMain] and exit.
func IsChild() bool { return os.Getenv(childEnv) != "" }

// ChildMain runs a worker process: its workers contend until standard input
// closes, then it writes their records to standard output (gob) and
// returns the exit status.
func ChildMain() int {
	if err := childMain(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "torture worker process: %v\n", err)
		return 1
	}
	return 0
}

func childMain(stdin io.Reader, stdout io.Writer) error {
	var spec childSpec
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &spec); err != nil {
		return fmt.Errorf("bad %s: %w", childEnv, err)
	}
	clock := ClockAt(spec.Epoch)
	client, err := rpc.Dial("tcp", spec.Resource)
	if err != nil {
		return err
	}
	defer client.Close()
	urls := spec.URLs
	cfg := Config{
		Backend:  Backend{Name: "worker", TTL: spec.Workload.TTL, ClientURL: func(i int) string { return urls[i-spec.FirstWorker] }},
		Workload: spec.Workload, Prefix: spec.Prefix, Seed: spec.Seed,
	}
	keys := keyIndex(spec.Prefix)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	set := &workerSet{}
	defer set.closeAll()
	for i := range urls {
		l, closer, err := cfg.Backend.open(ctx, spec.FirstWorker+i)
		if err != nil {
			return err
		}
		set.close = append(set.close, closer)
		set.ws = append(set.ws, newWorker(spec.FirstWorker+i, spec.Proc, cfg, l, keys, clock, remoteFence{client}))
	}
	// Standard input closing is the signal to stop.
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()
	set.run(ctx)
	return gob.NewEncoder(stdout).Encode(set.records())
}

// proc is a worker process seen from the coordinator.
type proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout bytes.Buffer
	stderr bytes.Buffer
	mu     sync.Mutex
	paused bool
}

func startProc(argv []string, spec childSpec) (*proc, error) {
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		argv = []string{exe}
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	p := &proc{cmd: exec.Command(argv[0], argv[1:]...)}
	p.cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("torture: starting a worker process: %w", err)
	}
	return p, nil
}

// pause stops the process with SIGSTOP: its workers, their renewals and
// their timers all stand still, as in a long stop-the-world pause.
func (p *proc) pause() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	p.paused = true
	return nil
}

// resume continues a paused process (SIGCONT).
func (p *proc) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		p.paused = false
	}
}

// stop asks the process to stop, waits for it, and decodes its records.
func (p *proc) stop() (Records, error) {
	_ = p.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		_ = p.cmd.Process.Kill()
		err = errors.Join(errors.New("did not stop within 2 minutes; killed"), <-done)
	}
	var recs Records
	if err == nil {
		err = gob.NewDecoder(&p.stdout).Decode(&recs)
	}
	if err != nil {
		return recs, fmt.Errorf("worker process %d: %w: %s", p.cmd.Process.Pid, err, lastLines(p.stderr.String(), 5))
	}
	return recs, nil
}

func lastLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
