package conformance

import (
	"os"
	"strings"
	"testing"
	"time"
)

// openSockets returns the sockets this process has open, by the targets of
// the links in /proc/self/fd ("socket:[inode]"), or nil where the system
// has no such directory.
func openSockets() map[string]bool {
	const dir = "/proc/self/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	socks := make(map[string]bool)
	for _, e := range entries {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err == nil && strings.HasPrefix(target, "socket:") {
			socks[target] = true
		}
	}
	return socks
}

// socketGrace is how long NoConnectionLeak waits for connections to close:
// some clients close theirs from a goroutine after Close returns.
const socketGrace = 2 * time.Second

// checkSockets is the NoConnectionLeak clause: once every subtest's Lockers
// were closed by their Cleanups, the process has no socket that it did not
// have before the suite started. A Locker that is never closed, or whose
// client's connections outlive it, fails here even when its client starts
// no goroutine that the goroutine-leak check could see.
func checkSockets(t *testing.T, before map[string]bool) {
	t.Helper()
	if before == nil {
		t.Skip("no /proc/self/fd on this system: connections cannot be counted")
	}
	deadline := time.Now().Add(socketGrace)
	for {
		var leaked []string
		for s := range openSockets() {
			if !before[s] {
				leaked = append(leaked, s)
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("contract clause violated: no connection outlives its owner: %d sockets opened during the suite are still open %v after every subtest ended: %v\n"+
				"likely cause: a Locker from NewLocker is not closed by a t.Cleanup, or closing it leaves its client's connections open (the test owns the client it hands the backend and must close it too)",
				len(leaked), socketGrace, leaked)
			return
		}
		time.Sleep(20 * time.Millisecond) // closing sends no event
	}
}
