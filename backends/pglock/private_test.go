package pglock_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/idemlock/lock/internal/testenv"
)

// server is a PostgreSQL instance of one test alone, for faults the shared
// server must never see: restarts, crashes, pauses. It runs from a data
// folder of its own on a free loopback port, as an unprivileged user when
// the test runs as root (postgres refuses to run as root).
type server struct {
	bin  string // the folder of initdb, pg_ctl and postgres
	dir  string
	port int
	cred *syscall.Credential
}

// privateServer starts a server for t and stops it when t ends. Like
// postgresURL it skips (or fails under IDEMLOCK_REQUIRE_SERVERS=1) when the
// shared server is not set up or PostgreSQL's programs are missing.
func privateServer(t *testing.T) *server {
	t.Helper()
	postgresURL(t)
	bin, err := pgBin()
	if err != nil {
		if testenv.Required() {
			t.Fatalf("pglock: %v", err)
		}
		t.Skipf("pglock: %v", err)
	}
	s := &server{bin: bin}
	dir, err := os.MkdirTemp("", "pglock-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s.dir = dir
	if os.Geteuid() == 0 {
		s.cred, err = unprivileged()
		if err != nil {
			t.Fatalf("pglock: %v", err)
		}
		if err := os.Chown(dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	s.run(t, "initdb", "-D", s.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	conf := "listen_addresses = '127.0.0.1'\nunix_socket_directories = '" + dir + "'\nmax_connections = 50\nfsync = on\n"
	if err := os.WriteFile(filepath.Join(s.data(), "postgresql.auto.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if s.cred != nil {
		_ = os.Chown(filepath.Join(s.data(), "postgresql.auto.conf"), int(s.cred.Uid), int(s.cred.Gid))
	}
	for attempt := 0; ; attempt++ {
		s.port = freePort(t)
		if err := s.ctl("start", "-w", "-t", "120", "-o", "-p "+strconv.Itoa(s.port)); err == nil {
			break
		} else if attempt == 4 {
			t.Fatalf("pglock: starting a private server: %v", err)
		}
	}
	t.Cleanup(func() {
		s.resume(t)
		_ = s.ctl("stop", "-m", "immediate", "-w")
	})
	return s
}

func (s *server) data() string { return filepath.Join(s.dir, "data") }

// URL returns the server's connection URL.
func (s *server) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

// restart stops the server (fast: a clean shutdown, or immediate: a crash
// that recovery repairs from the WAL) and starts it again on its port.
func (s *server) restart(t *testing.T, mode string) {
	t.Helper()
	if err := s.ctl("stop", "-m", mode, "-w"); err != nil {
		t.Fatalf("pg_ctl stop -m %s: %v", mode, err)
	}
	if err := s.ctl("start", "-w", "-t", "120", "-o", "-p "+strconv.Itoa(s.port)); err != nil {
		t.Fatalf("pg_ctl start: %v", err)
	}
}

// pause stops every process of the server with SIGSTOP: connections stay
// open and nothing answers, as with a hung server.
func (s *server) pause(t *testing.T) { t.Helper(); s.signal(t, syscall.SIGSTOP) }

// resume continues the server after pause.
func (s *server) resume(t *testing.T) { t.Helper(); s.signal(t, syscall.SIGCONT) }

func (s *server) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	for _, pid := range s.pids() {
		_ = syscall.Kill(pid, sig)
	}
}

// pids returns the postmaster's pid and its children's.
func (s *server) pids() []int {
	b, err := os.ReadFile(filepath.Join(s.data(), "postmaster.pid"))
	if err != nil {
		return nil
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return nil
	}
	pids := []int{pm}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at ")".
		rest := stat[bytes.LastIndexByte(stat, ')')+1:]
		f := strings.Fields(string(rest))
		if len(f) > 1 && f[1] == strconv.Itoa(pm) {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}

func (s *server) ctl(args ...string) error {
	args = append([]string{"-D", s.data(), "-l", filepath.Join(s.dir, "log")}, args...)
	out, err := s.cmd("pg_ctl", args...).CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		return fmt.Errorf("pg_ctl %s: %v\n%s\n%s", strings.Join(args, " "), err, out, lastLines(log, 20))
	}
	return nil
}

func (s *server) run(t *testing.T, prog string, args ...string) {
	t.Helper()
	if out, err := s.cmd(prog, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", prog, err, out)
	}
}

func (s *server) cmd(prog string, args ...string) *exec.Cmd {
	c := exec.Command(filepath.Join(s.bin, prog), args...)
	c.Dir = s.dir
	c.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	if s.cred != nil {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return c
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// pgBin finds PostgreSQL's server programs: beside pg_ctl on the PATH, or
// in Debian's /usr/lib/postgresql/<version>/bin.
func pgBin() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "pg_ctl")); err == nil {
			return dirs[i], nil
		}
	}
	return "", fmt.Errorf("PostgreSQL's pg_ctl not found on the PATH or in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
}

// unprivileged returns the user a private server runs as under root:
// postgres if it exists, else nobody.
func unprivileged() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, fmt.Errorf("no unprivileged user (postgres or nobody) to run a private PostgreSQL as")
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
