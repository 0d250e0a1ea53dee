package conformance

import (
	"context"
	"time"

	"github.com/idemlock/lock"
)

// testLossNotification is the clause of lock.LossNotifier: Lost returns at
// once, even while the server does not answer (KeepAlive calls it before
// it returns), its channel stays open while the lease holds, and, when the
// Store is also a lock.Admin, it is closed soon after the key is forced
// out: a backend that learns of a loss on its own reports it as an event,
// not at the next refresh.
func testLossNotification(c *check, p storeParams) {
	s := p.newStore(c)
	probe := c.claim(s, c.key("probe"), p.long)
	if _, ok := probe.(lock.LossNotifier); !ok {
		c.release(probe)
		c.Skipf("optional capability: the lease %T is not a lock.LossNotifier", probe)
	}
	c.release(probe)

	// Lost returns at once while the server hangs.
	if p.cfg.NewFaultyStore != nil {
		fs, f := p.newFaultyStore(c)
		le := c.claim(fs, c.key("stalled"), p.short) // short: a stalled release leaves it to expire
		f.StallNextRequest()
		c.lostReturns(le.(lock.LossNotifier), "while the server does not answer")
		// Free the key if the stall went to Lost's own watch; if it is
		// still pending, the release gives up with its context.
		ctx, cancel := context.WithTimeout(c.ctx(), p.slack+SchedulingSlack)
		_ = le.Release(ctx)
		cancel()
	}

	key := c.key("forced")
	le := c.claim(s, key, p.long)
	ch := c.lostReturns(le.(lock.LossNotifier), "")
	if err := le.Refresh(c.ctx(), p.long); err != nil {
		c.Fatalf("Refresh of a held lease: %v", err)
	}
	select {
	case <-ch:
		c.Fatalf("Lost's channel is closed while the lease holds (a Refresh just succeeded)")
	default:
	}
	a, ok := s.(lock.Admin)
	if !ok {
		c.release(le)
		return
	}
	if err := a.ForceRelease(c.ctx(), key); err != nil {
		c.Fatalf("ForceRelease(%q) of a claimed key: %v", key, err)
	}
	forced := time.Now()
	bound := p.slack + SchedulingSlack
	select {
	case <-ch:
		c.Logf("loss reported %v after ForceRelease", time.Since(forced))
	case <-time.After(bound):
		c.Fatalf("Lost's channel still open %v after ForceRelease took the key from the lease", bound)
	}
}

// lostReturns calls Lost and fails the clause unless it returns within
// SchedulingSlack.
func (c *check) lostReturns(ln lock.LossNotifier, when string) <-chan struct{} {
	c.Helper()
	got := make(chan (<-chan struct{}), 1)
	go func() { got <- ln.Lost() }()
	select {
	case ch := <-got:
		if ch == nil {
			c.Fatalf("Lost returned a nil channel %s", when)
		}
		return ch
	case <-time.After(SchedulingSlack):
		c.Causef("Lost waits for a request to the server; start the watch for the loss on a goroutine of its own and return the channel at once",
			"Lost did not return within %v %s", SchedulingSlack, when)
		return nil
	}
}
