package idempotency

import (
	"context"
	"errors"
	"sync"
)

// ErrShutdown is returned by [Do] once [Guard.Shutdown] was called: the
// key was not claimed and the function did not run, so the message can be
// nacked for another consumer.
var ErrShutdown = errors.New("idempotency: guard shut down")

// lifecycle counts the claims in flight on a Guard and those made with
// [Guard.With] from it, which share it, and stops new ones at Shutdown.
type lifecycle struct {
	stopping context.Context // cancelled by Shutdown: ends waits
	stop     context.CancelFunc

	mu       sync.Mutex
	closed   bool
	inflight int
	idle     chan struct{} // closed once closed and no claim is in flight
}

func newLifecycle() *lifecycle {
	ctx, cancel := context.WithCancel(context.Background())
	return &lifecycle{stopping: ctx, stop: cancel, idle: make(chan struct{})}
}

// enter counts a claim in; it returns false once Shutdown was called.
func (l *lifecycle) enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.inflight++
	return true
}

// hold counts in a continuation of a claim in flight (its result still
// being stored): unlike enter it is never refused, the claim it continues
// having kept Shutdown waiting.
func (l *lifecycle) hold() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inflight++
}

// leave counts a claim out once its key was completed or released.
func (l *lifecycle) leave() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inflight--
	if l.closed && l.inflight == 0 {
		close(l.idle)
	}
}

// shutting reports whether Shutdown was called.
func (l *lifecycle) shutting() bool { return l.stopping.Err() != nil }

// Shutdown stops g taking new claims and waits for those in flight. It is
// for the end of a process, before the Store's backend is closed: the
// middleware then answers every request with a key 503
// [ProblemShuttingDown] with Retry-After (nothing is claimed or run, so a
// retry, on another instance, runs it), and [Do] returns [ErrShutdown]; a
// duplicate waiting with [WithWait] stops waiting and gets the same 503.
// Requests and Do calls that claimed their key before run to the end: their
// results are stored, or their keys released, before Shutdown returns (a
// result whose store was unreachable when the work ended is still being
// stored in the background, for up to three lease TTLs more).
//
// Shutdown applies to g and to every Guard made from it with [Guard.With]
// or made from those (they share one Store). It returns nil once nothing
// is in flight, or ctx's error if ctx ends first; the work in flight then
// goes on, and a later Shutdown waits for it again. Call it after
// http.Server.Shutdown stopped the listeners (or while a load balancer
// still drains traffic to the instance) and before closing the backend:
//
//	_ = srv.Shutdown(ctx)   // no new connections; waits for handlers
//	_ = guard.Shutdown(ctx) // guarded work done (workers' Do calls too)
//	_ = backend.Close()
func (g *Guard) Shutdown(ctx context.Context) error { return g.r.Shutdown(ctx) }

// Shutdown stops r taking new claims and waits for those in flight, as
// [Guard.Shutdown] does: [Do] and [Once] then return [ErrShutdown]. A
// Guard's Runner shares the Guard's Shutdown.
func (r *Runner) Shutdown(ctx context.Context) error {
	l := r.life
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		if l.inflight == 0 {
			close(l.idle)
		}
	}
	l.mu.Unlock()
	l.stop()
	select {
	case <-l.idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
