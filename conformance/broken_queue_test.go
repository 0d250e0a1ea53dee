package conformance_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock"
)

// The queue flaws: the broken server's clients implement lock.Queuer (as
// they do without a flaw) with a queue that serves the newest waiter first,
// or whose woken head leaves without waking the next waiter, or leaves
// after a take of unknown outcome without waking the next waiter (which
// then sleeps through the end of the take nobody holds a lease for), or
// whose ticket, retried after such a take, keeps its place at the head
// without waking the next waiter (which sleeps as long), or does so with a
// ticket whose Wait ignores its context (then the waiter the clause
// strands never returns, and the clause must fail, not hang).
func init() {
	flaws["queue-lifo"] = "QueueOrder"
	flaws["queue-strands"] = "QueueHeadGivesUp"
	flaws["queue-lost-strands"] = "QueueHeadTakeLost"
	flaws["queue-retry-strands"] = "QueueTicketRetryAfterLostTake"
	flaws["queue-deaf-strands"] = "QueueTicketRetryAfterLostTake"
}

// locker returns c as the suite sees it: a lock.Queuer without a flaw and
// with the queue flaws, so that the whole suite runs queued waiting too;
// a poller with takeWaits; otherwise the plain client, whose waiting the
// other flaws break.
func (s *brokenServer) locker(c *brokenClient) lock.Locker {
	if s.flaw == takeWaits {
		return pollingClient{c}
	}
	if s.flaw == "none" || strings.HasPrefix(s.flaw, "queue-") {
		return queuedClient{c}
	}
	return c
}

// queuedClient is a brokenClient with a queue: its tickets are brokenSubs
// (the server wakes the first of a key's subscriptions on a release, and a
// leaving one passes the wake-up on), whose take refuses while another
// waiter is ahead.
type queuedClient struct{ *brokenClient }

func (q queuedClient) Queue(ctx context.Context, key string) (lock.Ticket, error) {
	if err := lock.CheckContext(ctx); err != nil {
		return nil, err
	}
	if err := lock.ValidateKey(key); err != nil {
		return nil, err
	}
	s := q.srv
	sub := &brokenSub{srv: s, key: key, ch: make(chan struct{}, 1)}
	s.mu.Lock()
	if s.flaw == "queue-lifo" {
		s.waiters[key] = append([]*brokenSub{sub}, s.waiters[key]...) // the flaw: a stack
	} else {
		s.waiters[key] = append(s.waiters[key], sub)
	}
	s.mu.Unlock()
	return &brokenTicket{brokenSub: sub, c: q.brokenClient}, nil
}

type brokenTicket struct {
	*brokenSub
	c    *brokenClient
	lost bool // its latest take's outcome is unknown
}

// Close leaves the queue; after a take of unknown outcome, which may hold
// the key, it wakes the next waiter too, so that the waiter learns the
// take's shorter remaining TTL (unless the flaw leaves it asleep).
func (t *brokenTicket) Close() error {
	err := t.brokenSub.Close()
	s := t.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	if subs := s.waiters[t.key]; t.lost && len(subs) > 0 && s.flaw != "queue-lost-strands" {
		subs[0].notify()
	}
	return err
}

// Wait is the subscription's, deaf to ctx with the queue-deaf-strands flaw.
func (t *brokenTicket) Wait(ctx context.Context, held *lock.NotAcquiredError) error {
	if t.srv.flaw == "queue-deaf-strands" {
		<-t.ch // the flaw: only a wake-up ends the wait
		return nil
	}
	return t.brokenSub.Wait(ctx, held)
}

// TryAcquire is one take, refused while another waiter is ahead. A retry
// after a take of unknown outcome, which may hold the key, first leaves
// the queue as Close does, waking the next waiter, and queues again at the
// back (unless the flaw keeps its place and wakes nobody).
func (t *brokenTicket) TryAcquire(ctx context.Context, ttl time.Duration) (lock.Lease, error) {
	s := t.srv
	s.mu.Lock()
	if t.lost && !t.closed && s.flaw != "queue-retry-strands" && s.flaw != "queue-deaf-strands" {
		subs := slices.DeleteFunc(s.waiters[t.key], func(w *brokenSub) bool { return w == t.brokenSub })
		if len(subs) > 0 {
			subs[0].notify()
		}
		s.waiters[t.key] = append(subs, t.brokenSub)
	}
	subs := s.waiters[t.key]
	ahead := len(subs) > 0 && subs[0] != t.brokenSub
	refused := &lock.NotAcquiredError{Key: t.key}
	if cur := s.holder(t.key); cur != nil {
		refused.Remaining = time.Until(cur.deadline)
	}
	s.mu.Unlock()
	if ahead {
		if err := lock.CheckArgs(ctx, t.key, ttl); err != nil {
			return nil, err
		}
		// Refused as the take would be, by a request (which queues the
		// ticket: a write): with the holder's remaining TTL, or none
		// (poll) when the key is free but a waiter is ahead.
		err := t.c.request(ctx, true, func() error { return refused })
		t.lost = !errors.Is(err, lock.ErrNotAcquired)
		return nil, err
	}
	le, err := t.c.TryAcquire(ctx, t.key, ttl)
	t.lost = err != nil && !errors.Is(err, lock.ErrNotAcquired)
	if err == nil { // taken: out of the queue, with nothing to pass on
		s.mu.Lock()
		t.closed = true
		s.waiters[t.key] = slices.DeleteFunc(s.waiters[t.key], func(w *brokenSub) bool { return w == t.brokenSub })
		s.mu.Unlock()
	}
	return le, err
}

// TestBrokenQueueFlawsServed checks the queue flaws' child processes run
// the queue clauses at all: a queued client is a lock.Queuer.
func TestBrokenQueueFlawsServed(t *testing.T) {
	srv := newBrokenServer(t, "queue-lifo")
	if _, ok := srv.locker(srv.client(t)).(lock.Queuer); !ok {
		t.Fatal("the queue-lifo server's locker is not a lock.Queuer: its clause would be skipped")
	}
}
