package faults

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Direction says which way through a proxy a network fault acts.
type Direction int

// The directions of a connection.
const (
	// ToServer is the client's requests, on their way to the server.
	ToServer Direction = 1 << iota
	// ToClient is the server's replies (and pushes), on their way back.
	ToClient
	// Both is either way.
	Both = ToServer | ToClient
)

func (d Direction) String() string {
	switch d {
	case ToServer:
		return "to server"
	case ToClient:
		return "to client"
	case Both:
		return "both ways"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

type kind int

const (
	kindLatency kind = iota
	kindBlackHole
	kindRefuse
	kindLoseReply
	kindProcess
)

// Fault is one injected fault. It lasts until Heal, which the test's
// cleanup calls in any case. Hits counts the times it acted: chunks of data
// it delayed or held, connections it refused or reset, replies it lost; a
// process fault (pause, kill) counts one hit when it is done.
type Fault struct {
	desc string
	kind kind

	// Network faults.
	net     *Net
	proxy   *Proxy // nil: every proxy of net
	dir     Direction
	latency time.Duration
	jitter  time.Duration
	once    bool        // kindLoseReply: only the next reply
	claimed atomic.Bool // kindLoseReply once: a connection's next reply is claimed

	// Process faults.
	healFn func() error

	tb       testing.TB
	hits     atomic.Int64
	hit      chan struct{}
	hitOnce  sync.Once
	healOnce sync.Once
	healed   atomic.Bool
}

func newFault(tb testing.TB, k kind, desc string) *Fault {
	return &Fault{tb: tb, kind: k, desc: desc, hit: make(chan struct{})}
}

// String says what the fault does, for test logs.
func (f *Fault) String() string { return f.desc }

// Hits returns how many times the fault has acted so far.
func (f *Fault) Hits() int64 { return f.hits.Load() }

// Hit returns a channel closed when the fault acts for the first time: a
// test waits on it instead of sleeping ("the reply has been lost", "the
// black hole holds a request").
func (f *Fault) Hit() <-chan struct{} { return f.hit }

func (f *Fault) recordHit() {
	f.hits.Add(1)
	f.hitOnce.Do(func() { close(f.hit) })
}

// Healed reports whether Heal has run.
func (f *Fault) Healed() bool { return f.healed.Load() }

// Heal ends the fault: traffic flows normally again, a paused process is
// resumed, a killed one restarted (and Heal returns once its topology is
// healthy again). Held data is delivered, as TCP delivers it when a
// partition ends; call [Net.Reset] first to drop it instead. Heal may be
// called more than once and from any goroutine; a failure to heal fails
// the test that made the fault.
func (f *Fault) Heal() {
	f.healOnce.Do(func() {
		f.healed.Store(true)
		if f.net != nil {
			f.net.remove(f)
		}
		if f.healFn != nil {
			if err := f.healFn(); err != nil {
				f.tb.Errorf("faults: healing %s: %v", f, err)
			}
		}
	})
}

// register makes the test's cleanup heal f.
func (f *Fault) register() *Fault {
	f.tb.Cleanup(f.Heal)
	return f
}
