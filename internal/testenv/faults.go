package testenv

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// Fault is a fault a [FaultSwitch] arms for one request.
type Fault int

// The faults a FaultSwitch arms.
const (
	NoFault   Fault = iota
	LoseReply       // the request is applied and its reply lost
	Stall           // the request gets no answer until its context ends
)

// FaultSwitch is the state behind a backend test's implementation of
// conformance.Faults: LoseNextReply and StallNextRequest arm a fault, and
// the test's transport (a go-redis hook, a gRPC interceptor, an
// http.RoundTripper, a net.Conn wrapper) takes it with [FaultSwitch.Take]
// for the next request that carries a lock operation, and carries it out.
// It is safe for concurrent use.
type FaultSwitch struct {
	done <-chan struct{} // closed when the test ends

	mu    sync.Mutex
	armed Fault
	fired int
}

// NewFaultSwitch returns a FaultSwitch whose stalls end when tb ends.
func NewFaultSwitch(tb testing.TB) *FaultSwitch {
	return &FaultSwitch{done: tb.Context().Done()}
}

// LoseNextReply arms [LoseReply] for the next request.
func (f *FaultSwitch) LoseNextReply() { f.arm(LoseReply) }

// StallNextRequest arms [Stall] for the next request.
func (f *FaultSwitch) StallNextRequest() { f.arm(Stall) }

func (f *FaultSwitch) arm(x Fault) {
	f.mu.Lock()
	f.armed = x
	f.mu.Unlock()
}

// Disarm drops the armed fault, if any, and reports whether there was one
// (conformance.FaultDisarmer).
func (f *FaultSwitch) Disarm() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	armed := f.armed != NoFault
	f.armed = NoFault
	return armed
}

// Take returns the armed fault and disarms it; a transport calls it for
// each request that carries a lock operation.
func (f *FaultSwitch) Take() Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	x := f.armed
	if x != NoFault {
		f.armed = NoFault
		f.fired++
	}
	return x
}

// Rearm puts back a fault that Take returned but the transport could not
// apply to that request (for example a Redis EVALSHA answered NOSCRIPT,
// which the client follows with the real request).
func (f *FaultSwitch) Rearm(x Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if x != NoFault && f.armed == NoFault {
		f.armed = x
		f.fired--
	}
}

// Fired returns how many faults were taken so far, so that a test can check
// that the fault it armed did hit a request.
func (f *FaultSwitch) Fired() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fired
}

// Stall blocks as a server that never answers would: until ctx ends, when
// it returns ctx's error, or until the test ends, when it returns
// [ErrStallEnded].
func (f *FaultSwitch) Stall(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-f.done:
		return ErrStallEnded
	}
}

// ErrStallEnded is returned by a stalled request when its test ended.
var ErrStallEnded = errors.New("testenv: stalled request ended with its test")

// ErrLostReply is the error a transport returns for a reply it lost. It is
// a net.Error that reports a timeout, as a client that waited in vain for
// the reply would see.
var ErrLostReply error = lostReply{}

type lostReply struct{}

func (lostReply) Error() string {
	return "i/o timeout (testenv: reply lost after the server applied the request)"
}
func (lostReply) Timeout() bool   { return true }
func (lostReply) Temporary() bool { return true }

// OnStack reports whether the calling goroutine's stack holds a function
// whose full name contains one of names. Transports use it to tell a
// backend's background requests (renewals of pooled sessions, refills)
// from the requests of lock operations, which run on the caller's
// goroutine.
func OnStack(names ...string) bool {
	pcs := make([]uintptr, 512)
	n := runtime.Callers(2, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	for {
		fr, more := frames.Next()
		for _, name := range names {
			if strings.Contains(fr.Function, name) {
				return true
			}
		}
		if !more {
			return false
		}
	}
}
