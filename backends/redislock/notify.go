package redislock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/redis/go-redis/v9"
)

// The notifier multiplexes every waiter of a Locker onto one pub/sub
// connection per server (per master node in Cluster), each read by one
// goroutine. Locking: notifier.mu guards the maps and every subscription's
// attachment; subConn.cmdMu serialises the (UN)SUBSCRIBE commands of one
// connection with the map changes they follow, so that the server's view and
// ours change in the same order. Any surprise on a connection — a read
// error, an error reply, the server unsubscribing a channel because its slot
// moved — tears the whole connection down: its waiters are woken and
// re-subscribe (on a fresh connection, to the slot's current owner) before
// they try again. Wake-ups may be spurious; they are never missed.

// errConnLost means a subscription connection was torn down while it was
// being used; the operation starts over on a new one.
var errConnLost = errors.New("redislock: subscription connection lost")

// subscribeAttempts bounds how often Subscribe starts over on a new
// connection before it gives up (Acquire then polls instead).
const subscribeAttempts = 5

type notifier struct {
	l      *Locker
	mu     sync.Mutex
	closed bool
	conns  map[string]*subConn // by node address; "" for a non-Cluster client
	seq    uint64              // for PING payloads
	wg     sync.WaitGroup      // the receiving goroutines
}

// subConn is one pub/sub connection and its receiving goroutine.
type subConn struct {
	n       *notifier
	addr    string
	ps      *redis.PubSub
	sharded bool          // SSUBSCRIBE rather than SUBSCRIBE
	dead    chan struct{} // closed by teardown
	cmdMu   sync.Mutex

	// Guarded by n.mu.
	isDead bool
	chans  map[string]*chanState // subscribed channels
	pings  map[string]*chanState // PING payload → the channel it confirms
	unsubs map[string]int        // our UNSUBSCRIBEs whose reply is pending
}

// chanState is one subscribed channel and its waiters.
type chanState struct {
	subs      map[*subscription]struct{}
	ready     chan struct{} // closed once the server confirmed the subscription
	confirmed bool
}

// subscription is one waiter's lock.Subscription.
type subscription struct {
	n       *notifier
	key     string
	channel string
	wake    chan struct{} // one slot: a wake-up is kept until Wait takes it
	id      string        // a queued ticket's id: woken only by releases naming it or no waiter

	// Guarded by n.mu.
	sc     *subConn   // nil when detached (not yet subscribed, or torn down)
	cs     *chanState // the channel state in sc
	closed bool
}

// Subscribe starts watching key for releases and completions. It returns
// once the server has confirmed the subscription, so no release after that
// goes unreported. The subscription's Wait ignores its held argument (Redis
// pub/sub has no versions); callers bound it by held.Remaining themselves.
func (l *Locker) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	if err := l.gate.CheckKey(ctx, "subscribe", key); err != nil {
		return nil, err
	}
	s := &subscription{n: &l.notify, key: key, channel: l.keysFor(key).lock, wake: make(chan struct{}, 1)}
	if err := s.subscribe(ctx); err != nil {
		return nil, errs.OpError("subscribe", key, err)
	}
	return s, nil
}

// Wait blocks until the key may have been released or completed since
// Subscribe or the previous Wait, or until ctx ends. If the subscription's
// connection was lost (or its slot moved) it re-subscribes before it
// returns nil, so that the caller's next attempt is covered; if that fails,
// it returns the error and the caller should poll instead.
func (s *subscription) Wait(ctx context.Context, _ *lock.NotAcquiredError) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	s.n.mu.Lock()
	closed, detached := s.closed, s.sc == nil
	s.n.mu.Unlock()
	if closed {
		return errs.InvalidArgument("Wait on a closed subscription")
	}
	if !detached {
		select {
		case <-s.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.n.mu.Lock()
		detached = s.sc == nil && !s.closed
		s.n.mu.Unlock()
	}
	if detached {
		// Whatever wake-up is pending came before the subscription was
		// lost; re-subscribing and returning nil covers it.
		select {
		case <-s.wake:
		default:
		}
		if err := s.subscribe(ctx); err != nil {
			return errs.OpError("re-subscribe", s.key, err)
		}
	}
	return nil
}

// Close ends the subscription, unsubscribing its channel when it was the
// channel's last waiter. It is safe to call more than once.
func (s *subscription) Close() error {
	s.n.mu.Lock()
	s.closed = true
	s.n.mu.Unlock()
	s.detach()
	return nil
}

// subscribe attaches s to the connection for its channel and waits for
// the server's confirmation, starting over on a new connection when one is
// lost meanwhile.
func (s *subscription) subscribe(ctx context.Context) error {
	var last error
	for attempt := range subscribeAttempts {
		if attempt > 0 {
			// A lost connection in Cluster often means a moved slot: let
			// go-redis learn the new layout before asking it again.
			if c := s.n.l.cluster; c != nil {
				c.ReloadState(ctx)
			}
			if err := sleepCtx(ctx, time.Duration(attempt)*20*time.Millisecond); err != nil {
				return err
			}
		}
		sc, err := s.n.conn(ctx, s.channel)
		if err != nil {
			return err
		}
		cs, err := sc.add(ctx, s)
		if err == nil {
			select {
			case <-cs.ready:
				return nil
			case <-sc.dead:
				err = errConnLost
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		s.detach()
		if !errors.Is(err, errConnLost) {
			return err
		}
		last = err
	}
	return last
}

// detach removes s from its channel, unsubscribing the channel after its
// last waiter.
func (s *subscription) detach() {
	n := s.n
	n.mu.Lock()
	sc := s.sc
	n.mu.Unlock()
	if sc == nil {
		return
	}
	sc.cmdMu.Lock()
	defer sc.cmdMu.Unlock()
	n.mu.Lock()
	if s.sc != sc { // torn down meanwhile
		n.mu.Unlock()
		return
	}
	cs := s.cs
	s.sc, s.cs = nil, nil
	delete(cs.subs, s)
	last := len(cs.subs) == 0 && !sc.isDead
	if last {
		delete(sc.chans, s.channel)
		sc.unsubs[s.channel]++
	}
	n.mu.Unlock()
	if last {
		var err error
		if sc.sharded {
			err = sc.ps.SUnsubscribe(context.Background(), s.channel)
		} else {
			err = sc.ps.Unsubscribe(context.Background(), s.channel)
		}
		if err != nil {
			sc.teardown()
		}
	}
}

// conn returns the live subscription connection for channel, making it if
// needed.
func (n *notifier) conn(ctx context.Context, channel string) (*subConn, error) {
	var (
		addr string
		node redis.UniversalClient = n.l.client
	)
	if c := n.l.cluster; c != nil {
		m, err := c.MasterForKey(ctx, channel)
		if err != nil {
			return nil, err
		}
		node, addr = m, m.Options().Addr
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, lock.ErrClosed
	}
	if sc := n.conns[addr]; sc != nil {
		return sc, nil
	}
	sc := &subConn{
		n:       n,
		addr:    addr,
		sharded: n.l.cluster != nil,
		dead:    make(chan struct{}),
		chans:   map[string]*chanState{},
		pings:   map[string]*chanState{},
		unsubs:  map[string]int{},
	}
	// With no channels, this makes no connection yet: the receiving
	// goroutine's first Receive dials it.
	if sc.sharded {
		sc.ps = node.SSubscribe(ctx)
	} else {
		sc.ps = node.Subscribe(ctx)
	}
	if n.conns == nil {
		n.conns = map[string]*subConn{}
	}
	n.conns[addr] = sc
	n.wg.Add(1)
	go sc.receive()
	return sc, nil
}

// add registers s on its channel, subscribing the channel (and sending the
// PING whose answer confirms it) if s is its first waiter.
func (sc *subConn) add(ctx context.Context, s *subscription) (*chanState, error) {
	n := sc.n
	sc.cmdMu.Lock()
	defer sc.cmdMu.Unlock()
	n.mu.Lock()
	if sc.isDead {
		n.mu.Unlock()
		return nil, errConnLost
	}
	cs := sc.chans[s.channel]
	first := cs == nil
	if first {
		cs = &chanState{subs: map[*subscription]struct{}{}, ready: make(chan struct{})}
		sc.chans[s.channel] = cs
	}
	cs.subs[s] = struct{}{}
	s.sc, s.cs = sc, cs
	var payload string
	if first {
		n.seq++
		payload = "idemlock-" + strconv.FormatUint(n.seq, 36)
		sc.pings[payload] = cs
	}
	n.mu.Unlock()
	if !first {
		return cs, nil
	}
	// The commands are written without ctx's cancellation: a failed write
	// tears the connection down for every waiter on it, and one waiter
	// giving up must not do that. Waiting for the answer honours ctx.
	wctx := context.WithoutCancel(ctx)
	var err error
	if sc.sharded {
		err = sc.ps.SSubscribe(wctx, s.channel)
	} else {
		err = sc.ps.Subscribe(wctx, s.channel)
	}
	if err == nil {
		// Commands on one connection are answered in order: the PONG
		// proves the server has subscribed the channel.
		err = sc.ps.Ping(wctx, payload)
	}
	if err != nil {
		sc.teardown()
		return nil, fmt.Errorf("%w: %w", errConnLost, err)
	}
	return cs, nil
}

// receive reads the connection until it fails or is closed.
func (sc *subConn) receive() {
	defer sc.n.wg.Done()
	ctx := context.Background()
	for {
		msg, err := sc.ps.Receive(ctx)
		if err != nil {
			if strings.HasPrefix(err.Error(), "MOVED ") || strings.HasPrefix(err.Error(), "ASK ") {
				sc.reload(ctx)
			}
			sc.teardown()
			return
		}
		switch m := msg.(type) {
		case *redis.Message:
			sc.deliver(m.Channel, m.Payload)
		case *redis.Pong:
			sc.confirm(m.Payload)
		case *redis.Subscription:
			if m.Kind == "sunsubscribe" && !sc.ownUnsubscribe(m.Channel) {
				// The server dropped the channel: its slot moved to
				// another node.
				sc.reload(ctx)
				sc.teardown()
				return
			}
			if m.Kind == "unsubscribe" {
				sc.ownUnsubscribe(m.Channel)
			}
		}
	}
}

// reload asks go-redis to refresh its Cluster layout.
func (sc *subConn) reload(ctx context.Context) {
	if c := sc.n.l.cluster; c != nil {
		c.ReloadState(ctx)
	}
}

// deliver wakes the waiters of channel: all of them, except the queued
// tickets that a message naming another waiter is not for.
func (sc *subConn) deliver(channel, payload string) {
	sc.n.mu.Lock()
	defer sc.n.mu.Unlock()
	if cs := sc.chans[channel]; cs != nil {
		for s := range cs.subs {
			if s.id != "" && s.id != payload && isTicketID(payload) {
				continue
			}
			s.notify()
		}
	}
}

// confirm marks the channel a PING was sent for as subscribed.
func (sc *subConn) confirm(payload string) {
	sc.n.mu.Lock()
	defer sc.n.mu.Unlock()
	cs := sc.pings[payload]
	delete(sc.pings, payload)
	if cs != nil && !cs.confirmed {
		cs.confirmed = true
		close(cs.ready)
	}
}

// ownUnsubscribe reports whether an unsubscribe reply for channel answers
// one of our own UNSUBSCRIBE commands, and counts it off.
func (sc *subConn) ownUnsubscribe(channel string) bool {
	sc.n.mu.Lock()
	defer sc.n.mu.Unlock()
	if sc.unsubs[channel] == 0 {
		return false
	}
	if sc.unsubs[channel]--; sc.unsubs[channel] == 0 {
		delete(sc.unsubs, channel)
	}
	return true
}

// teardown retires the connection: it detaches and wakes all its waiters
// (they re-subscribe on their next Wait) and closes the pub/sub, which ends
// the receiving goroutine.
func (sc *subConn) teardown() {
	n := sc.n
	n.mu.Lock()
	if sc.isDead {
		n.mu.Unlock()
		return
	}
	sc.isDead = true
	close(sc.dead)
	if n.conns[sc.addr] == sc {
		delete(n.conns, sc.addr)
	}
	for _, cs := range sc.chans {
		for s := range cs.subs {
			s.sc, s.cs = nil, nil
			s.notify()
		}
	}
	sc.chans, sc.pings = nil, nil
	n.mu.Unlock()
	_ = sc.ps.Close()
}

// notify records a wake-up without blocking. n.mu is held.
func (s *subscription) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// close tears every connection down and waits for the goroutines.
func (n *notifier) close() {
	n.mu.Lock()
	n.closed = true
	conns := make([]*subConn, 0, len(n.conns))
	for _, sc := range n.conns {
		conns = append(conns, sc)
	}
	n.mu.Unlock()
	for _, sc := range conns {
		sc.teardown()
	}
	n.wg.Wait()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
