package idempotency

import (
	"context"
	"sync"
	"time"
)

// detachedCtx is the context of the Store calls made after the work ran:
// the values of the request's context without its cancellation, ending at
// a deadline. It starts a timer only when Done is first called, so a Store
// that never selects on Done (memlock only checks Err) costs no timer; a
// networked client that does gets the same timer context.WithTimeout
// would start. Once Err reports an error it keeps reporting it, and Done
// is closed whenever Err is non-nil, as the context contract requires.
type detachedCtx struct {
	parent   context.Context // for values only
	deadline time.Time

	mu    sync.Mutex
	done  chan struct{} // nil until Done is called
	timer *time.Timer
	err   error
}

// closedChan is what Done returns for a context that already ended before
// anyone asked for its channel.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func newDetachedCtx(parent context.Context, timeout time.Duration) *detachedCtx {
	return &detachedCtx{parent: parent, deadline: time.Now().Add(timeout)}
}

func (c *detachedCtx) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *detachedCtx) Value(key any) any           { return c.parent.Value(key) }

func (c *detachedCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.done
	}
	if c.expiredLocked() != nil {
		return closedChan
	}
	c.done = make(chan struct{})
	c.timer = time.AfterFunc(time.Until(c.deadline), func() { c.end(context.DeadlineExceeded) })
	return c.done
}

func (c *detachedCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.err // the channel decides
	}
	return c.expiredLocked()
}

// expiredLocked makes the deadline sticky once seen by the clock, before
// any channel was handed out. c.mu is held.
func (c *detachedCtx) expiredLocked() error {
	if c.err == nil && !time.Now().Before(c.deadline) {
		c.err = context.DeadlineExceeded
	}
	return c.err
}

// end ends the context with err unless it already ended.
func (c *detachedCtx) end(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
}

// stop ends the context and frees its timer; the Store calls are over.
func (c *detachedCtx) stop() {
	c.mu.Lock()
	t := c.timer
	c.mu.Unlock()
	if t != nil {
		t.Stop()
	}
	c.end(context.Canceled)
}

func (c *detachedCtx) String() string { return "idempotency.detachedCtx" }
