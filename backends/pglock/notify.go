package pglock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgxlisten"
)

// The notifier is one LISTEN connection per Locker, run by a pgxlisten
// Listener in one goroutine from the first Subscribe until Close. It
// listens on the table's channel; releases and completions of a row that a
// failed take marked as waited for send pg_notify(channel, hash of the
// key), and the notifier wakes the subscriptions of that hash. Each
// (re)connection wakes every subscription, which
// covers whatever was released while the connection was down; while it is
// down, Wait returns an error, so lock.Acquire polls instead.

// reconnectDelay is how long the Listener waits before reconnecting after
// its connection failed.
const reconnectDelay = 250 * time.Millisecond

// subscribeWait bounds how long Subscribe waits for the listening
// connection before it gives up (lock.Acquire then polls).
const subscribeWait = 5 * time.Second

// errListenerDown is returned by Wait while the listening connection is
// down; lock.Acquire then polls.
var errListenerDown = errors.New("listening connection lost")

type notifier struct {
	l *Locker

	mu      sync.Mutex
	started bool
	closed  bool
	up      bool   // listening now
	errs    uint64 // connection failures so far
	lastErr error
	changed chan struct{} // closed and replaced when up or errs change
	subs    map[string]map[*subscription]struct{}
}

// subscription is one waiter's lock.Subscription.
type subscription struct {
	n       *notifier
	key     string
	payload string
	id      string        // a queued ticket's id: woken only by notifications naming it or no waiter
	wake    driver.Wakeup // a wake-up is kept until Wait takes it
	closed  bool          // guarded by n.mu
	token   int64         // guarded by n.mu: the token of a row handed to the ticket, if handOff
	handOff bool          // guarded by n.mu
}

// Subscribe starts watching key for releases and completions, which
// lock.Acquire uses to wait without polling. It returns once the Locker's
// listening connection is listening (it connects on the first Subscribe),
// so no release after that goes unreported; if the connection cannot be
// made (or is not listening within 5 s) it returns an error, and
// lock.Acquire polls instead. Expiry sends
// no notification: callers bound their waits by the remaining TTL that the
// failed take reported.
func (l *Locker) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	if err := l.gate.CheckKey(ctx, "subscribe", key); err != nil {
		return nil, err
	}
	s, err := l.subscribe(ctx, key, "")
	if err != nil {
		return nil, err
	}
	return s, nil
}

// subscribe is Subscribe, for a queued ticket when id is not "".
func (l *Locker) subscribe(ctx context.Context, key, id string) (*subscription, error) {
	n := &l.notify
	s := &subscription{n: n, key: key, payload: payload(hash64(key)), id: id, wake: driver.NewWakeup()}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, errs.Closed("subscribe", key)
	}
	n.start()
	if n.subs[s.payload] == nil {
		n.subs[s.payload] = map[*subscription]struct{}{}
	}
	n.subs[s.payload][s] = struct{}{}
	failures := n.errs
	timeout := time.NewTimer(subscribeWait)
	defer timeout.Stop()
	for !n.up {
		if n.errs != failures || n.closed {
			err := errs.OpError("subscribe", key, n.lastErr)
			if n.closed {
				err = errs.Closed("subscribe", key)
			}
			n.remove(s)
			n.mu.Unlock()
			return nil, err
		}
		changed := n.changed
		n.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			n.mu.Lock()
			n.remove(s)
			n.mu.Unlock()
			return nil, ctx.Err()
		case <-timeout.C:
			n.mu.Lock()
			n.remove(s)
			n.mu.Unlock()
			return nil, &driver.Error{Backend: errs, Op: "subscribe", Key: key, Err: errListenerDown, Detail: fmt.Sprintf("not listening after %v", subscribeWait)}
		}
		n.mu.Lock()
	}
	n.mu.Unlock()
	return s, nil
}

// start runs the Listener, once. n.mu is held.
func (n *notifier) start() {
	if n.started {
		return
	}
	n.started = true
	n.subs = map[string]map[*subscription]struct{}{}
	n.changed = make(chan struct{})
	ln := &pgxlisten.Listener{
		Connect:        n.connect,
		LogError:       n.failed,
		ReconnectDelay: reconnectDelay,
	}
	ln.Handle(n.l.channel, handler{n})
	n.l.wg.Add(1)
	go func() {
		defer n.l.wg.Done()
		_ = ln.Listen(n.l.bg) // returns when Close cancels bg
	}()
}

// connect takes a connection out of the pool for good: the Listener closes
// it when it is done with it.
func (n *notifier) connect(ctx context.Context) (*pgx.Conn, error) {
	c, err := n.l.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return c.Hijack(), nil
}

// failed is the Listener's error report: its connection (or an attempt to
// make one) failed, and it will try again after reconnectDelay.
func (n *notifier) failed(_ context.Context, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.up = false
	n.errs++
	n.lastErr = err
	n.wakeAll()
}

// wakeAll wakes every subscription and tells waiters in Subscribe that the
// state changed. n.mu is held.
func (n *notifier) wakeAll() {
	for _, set := range n.subs {
		for s := range set {
			s.wake.Notify()
		}
	}
	if n.changed != nil {
		close(n.changed)
		n.changed = make(chan struct{})
	}
}

// remove detaches s. n.mu is held.
func (n *notifier) remove(s *subscription) {
	if set := n.subs[s.payload]; set != nil {
		delete(set, s)
		if len(set) == 0 {
			delete(n.subs, s.payload)
		}
	}
}

// close stops the Listener (its context, the Locker's bg, is already
// cancelled) and wakes every subscription.
func (n *notifier) close() {
	n.mu.Lock()
	n.closed = true
	n.up = false
	if n.started {
		n.wakeAll()
	}
	n.mu.Unlock()
}

// handler receives the Listener's events.
type handler struct{ n *notifier }

// HandleBacklog is called once the connection listens: whatever was
// released while it was not is covered by waking everyone.
func (h handler) HandleBacklog(context.Context, string, *pgx.Conn) error {
	n := h.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.up = true
	n.wakeAll()
	return nil
}

// HandleNotification wakes the subscriptions of the released key's hash:
// all of them, except the queued tickets that a notification naming
// another waiter is not for.
func (h handler) HandleNotification(_ context.Context, nt *pgconn.Notification, _ *pgx.Conn) error {
	n := h.n
	hash, id, token := splitPayload(nt.Payload)
	n.mu.Lock()
	defer n.mu.Unlock()
	for s := range n.subs[hash] {
		if id != "" && s.id != "" && s.id != id {
			continue
		}
		if id != "" && s.id == id && token != "" {
			if v, err := strconv.ParseInt(token, 10, 64); err == nil {
				s.token, s.handOff = v, true
			}
		}
		s.wake.Notify()
	}
	return nil
}

// handed returns, once, the token of the row a release handed to the
// subscription's ticket, if a notification told of one.
func (s *subscription) handed() (int64, bool) {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	token, ok := s.token, s.handOff
	s.handOff = false
	return token, ok
}

// Wait blocks until the key may have been released or completed since
// Subscribe or the previous Wait, or until ctx ends; held is not needed
// (notifications carry no version). A nil return means "try again":
// wake-ups may be spurious, they are never missed. While the listening
// connection is down (it reconnects by itself) Wait returns an error, and
// lock.Acquire goes on by polling.
func (s *subscription) Wait(ctx context.Context, _ *lock.NotAcquiredError) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	n := s.n
	n.mu.Lock()
	err := s.usable()
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if err := s.wake.Wait(ctx); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return s.usable() // a new connection's wake-up is a spurious one
}

// usable says why s cannot wait. n.mu is held.
func (s *subscription) usable() error {
	switch {
	case s.closed:
		return errs.InvalidArgument("Wait on a closed subscription")
	case s.n.closed:
		return errs.Closed("wait", s.key)
	case !s.n.up && s.n.lastErr != nil:
		return errs.OpError("wait", s.key, fmt.Errorf("%w: %w", errListenerDown, s.n.lastErr))
	case !s.n.up:
		return errs.OpError("wait", s.key, errListenerDown)
	}
	return nil
}

// Close ends the subscription. Safe to call more than once.
func (s *subscription) Close() error {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.n.remove(s)
	}
	return nil
}
