package testenv

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
)

// childEnv carries a child process's directory and argument ("dir\narg").
const childEnv = "IDEMLOCK_TESTENV_CHILD"

// Child is the test binary run again as a child process running one test
// function, for a test that must kill a client (SIGKILL: it never gets to
// clean up), such as a queued waiter. The two sides signal each other by
// name through files in a directory of their own; nothing goes through the
// servers under test.
type Child struct {
	dir    string
	cmd    *exec.Cmd
	out    lockedBuffer
	exited chan struct{}
}

// StartChild runs the test function test of this binary in a child
// process, which reads arg with [ChildArg]. The child is killed when t
// ends, if it still runs.
func StartChild(t *testing.T, test, arg string) *Child {
	t.Helper()
	c := &Child{dir: t.TempDir(), exited: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	c.cmd.Env = append(os.Environ(), childEnv+"="+c.dir+"\n"+arg)
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() { c.Kill(t) })
	return c
}

// ChildArg returns the argument [StartChild] gave the child process this
// test runs in; ok is false in a test run normally, whose child-side test
// function then returns at once.
func ChildArg() (arg string, ok bool) {
	v, ok := os.LookupEnv(childEnv)
	if !ok {
		return "", false
	}
	_, arg, _ = strings.Cut(v, "\n")
	return arg, true
}

// childDir is the directory a child shares with its parent.
func childDir() string {
	dir, _, _ := strings.Cut(os.Getenv(childEnv), "\n")
	return dir
}

// ChildSignal tells the parent name (in the child process).
func ChildSignal(t *testing.T, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(childDir(), name), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// ChildAwait waits until the parent signalled name (in the child process,
// which the parent kills if it never comes).
func ChildAwait(name string) {
	for !exists(filepath.Join(childDir(), name)) {
		time.Sleep(time.Millisecond)
	}
}

// Signal tells the child name.
func (c *Child) Signal(t *testing.T, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(c.dir, name), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Signalled returns a condition for [Child.Await]: the child signalled
// name.
func (c *Child) Signalled(name string) func() bool {
	return func() bool { return exists(filepath.Join(c.dir, name)) }
}

// Await polls cond (an event on a server, which only polling can see)
// until it holds. It fails the test, with the child's output, if the child
// exits first or a minute passes (a child under -race on a loaded machine
// starts slowly).
func (c *Child) Await(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		select {
		case <-c.exited:
			t.Fatalf("the child exited before it %s:\n%s", what, c.out.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child had not %s after a minute:\n%s", what, c.out.String())
		}
	}
}

// Kill kills the child (SIGKILL) and waits for it to exit.
func (c *Child) Kill(t *testing.T) {
	t.Helper()
	select {
	case <-c.exited:
		return
	default:
	}
	if err := c.cmd.Process.Kill(); err != nil {
		t.Errorf("killing the child: %v", err)
	}
	<-c.exited
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// lockedBuffer is a bytes.Buffer safe for the child's output copier and
// the test reading it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Behind is a waiter in lock.Acquire behind a killed one (see
// [StartBehind]).
type Behind struct{ got chan error }

// StartBehind runs lock.Acquire of key on l in the background: the waiter
// behind a killed one. It releases what it gets.
func StartBehind(t *testing.T, l lock.Locker, key string) *Behind {
	b := &Behind{got: make(chan error, 1)}
	go func() {
		le, err := lock.Acquire(t.Context(), l, key, time.Minute)
		if err == nil {
			err = le.Release(context.Background())
		}
		b.got <- err
	}()
	return b
}

// AwaitKey fails the test unless the waiter gets the key within bound
// after since (what names since: "the holder's take", "the kill"); it
// waits up to three times bound, then the dead waiter strands the queue.
func (b *Behind) AwaitKey(t *testing.T, since time.Time, what string, bound time.Duration) {
	t.Helper()
	select {
	case err := <-b.got:
		if err != nil {
			t.Fatalf("the waiter behind a killed one: %v", err)
		}
		if d := time.Since(since); d > bound {
			t.Errorf("the waiter behind a killed one took the key %v after %s, want at most %v", d, what, bound)
		}
	case <-time.After(3 * bound):
		t.Fatalf("the waiter behind a killed one did not get the key within %v: the dead waiter strands the queue", 3*bound)
	}
}

// AwaitQueueLen polls a queue's length as the server sees it (a write on
// the server, which only polling can see) until it is n, failing the test
// after d.
func AwaitQueueLen[N ~int | ~int64](t *testing.T, queueLen func() N, n N, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := queueLen()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queue did not reach %d waiters within %v (it has %d)", n, d, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
