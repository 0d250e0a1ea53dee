package consullock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
)

// session is one Consul session. Its fields are guarded by pool.mu while
// it is idle in the pool; a lease owns it while it holds it.
type session struct {
	id       string
	ttl      time.Duration
	renewed  time.Time // when its create or latest successful renew was sent
	renewing bool      // the keeper is renewing it right now
}

// class is the pool of idle sessions of one TTL.
type class struct {
	ttl      time.Duration
	idle     []*session // the most recently returned last: takes pop from the end
	lastUse  time.Time
	creating int // spares the keeper is creating
	// low is the fewest idle sessions the class had since lowSince: the
	// bottom low of them went unused all that time (see trimAfter).
	low      int
	lowSince time.Time
}

// Pool sizes.
const (
	spares  = 1 // idle sessions the keeper keeps ready per TTL in use
	maxIdle = 8 // idle sessions kept per TTL; more are destroyed
	// opTimeout bounds each background request.
	opTimeout = 5 * time.Second
)

// maxAge is how long after its last renewal a pooled session may still be
// handed to a take: an eighth of the TTL, between 100 ms and 500 ms.
func maxAge(ttl time.Duration) time.Duration {
	return min(max(ttl/8, 100*time.Millisecond), 500*time.Millisecond)
}

// renewAfter is when the keeper renews an idle session.
func renewAfter(ttl time.Duration) time.Duration { return maxAge(ttl) / 2 }

// trimAfter is how long idle sessions beyond the spares may go unused
// before the keeper destroys them instead of renewing them again: four
// renewals, which cost twice what destroying and later re-creating one
// does. Without it, the sessions of one burst of concurrent takes would be
// renewed every renewAfter until the TTL falls out of use (keepWarm).
func trimAfter(ttl time.Duration) time.Duration { return 4 * renewAfter(ttl) }

// pool owns the Locker's sessions: the idle ones kept per TTL for the next
// take, the sessions to destroy, the creates running detached and the
// keeper goroutine that renews, creates and destroys in the background.
// Its mutex guards its own fields and those of its idle sessions; it
// calls no other part of the Locker.
type pool struct {
	client    *api.Client
	name      string        // of lock sessions
	lockDelay time.Duration // of lock sessions
	keepWarm  time.Duration

	mu      sync.Mutex
	closed  bool
	classes map[time.Duration]*class // idle sessions per TTL
	doomed  []string                 // sessions to destroy
	creates sync.WaitGroup           // session creates running detached
	keeping bool                     // the keeper goroutine runs
	poke    chan struct{}            // wakes the keeper
	wakeAt  time.Time                // when the keeper wakes unless poked
	stop    context.CancelFunc
	stopped chan struct{} // closed when the keeper returned
}

func newPool(client *api.Client, cfg config) *pool {
	return &pool{
		client:    client,
		name:      cfg.name,
		lockDelay: cfg.lockDelay,
		keepWarm:  cfg.keepWarm,
		classes:   make(map[time.Duration]*class),
		poke:      make(chan struct{}, 1),
	}
}

// get returns a fresh idle session of ttl, or creates one, and when it was
// last renewed (the base of a lease's deadline).
func (p *pool) get(ctx context.Context, ttl time.Duration) (*session, time.Time, error) {
	if s, renewed := p.takeIdle(ttl); s != nil {
		return s, renewed, nil
	}
	s, err := p.createDetached(ctx, ttl, p.name, p.lockDelay, p.putBack)
	if err != nil {
		return nil, time.Time{}, err
	}
	return s, s.renewed, nil
}

// takeIdle takes a fresh idle session of ttl out of the pool, with when it
// was last renewed, or returns nil and wakes the keeper to renew or replace
// the stale ones.
func (p *pool) takeIdle(ttl time.Duration) (*session, time.Time) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.keepWarm == 0 {
		return nil, time.Time{} // a closed pool's createDetached says so
	}
	c := p.classLocked(ttl)
	c.lastUse = now
	for i := len(c.idle) - 1; i >= 0; i-- {
		s := c.idle[i]
		// A session the keeper is renewing right now may be taken: the
		// renewal can only make it live longer than its deadline says.
		if now.Sub(s.renewed) > maxAge(ttl) {
			continue
		}
		c.idle = append(c.idle[:i], c.idle[i+1:]...)
		c.low = min(c.low, len(c.idle))
		if len(c.idle)+c.creating < spares {
			p.wakeLocked()
		}
		return s, s.renewed
	}
	c.low = 0      // every idle session was wanted
	p.wakeLocked() // nothing fresh: let the keeper renew or replace
	return nil, time.Time{}
}

// classLocked returns the class of ttl, made if need be. p.mu is held.
func (p *pool) classLocked(ttl time.Duration) *class {
	c := p.classes[ttl]
	if c == nil {
		c = &class{ttl: ttl}
		p.classes[ttl] = c
	}
	return c
}

// createDetached creates a session on a goroutine of the pool's, with a
// context of its own, and returns when it is created or ctx ends. A
// create that ctx abandoned still finishes, and the session goes to
// adopt, so that cancelling a caller never leaves a session nobody knows.
// close waits for such goroutines.
func (p *pool) createDetached(ctx context.Context, ttl time.Duration, name string, lockDelay time.Duration, adopt func(*session)) (*session, error) {
	type result struct {
		s   *session
		err error
	}
	var (
		mu        sync.Mutex
		abandoned bool
		done      = make(chan result, 1)
	)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errs.Closed("create session", "")
	}
	p.creates.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.creates.Done()
		cctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		s, err := p.create(cctx, ttl, name, lockDelay)
		cancel()
		mu.Lock()
		if abandoned {
			mu.Unlock()
			if s != nil {
				adopt(s)
			}
			return
		}
		done <- result{s, err}
		mu.Unlock()
	}()
	select {
	case r := <-done:
		return r.s, r.err
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		select {
		case r := <-done:
			return r.s, r.err
		default:
			abandoned = true
			return nil, ctx.Err()
		}
	}
}

// create creates a session with Consul's API: behavior delete, no health
// checks, the given TTL and lock-delay.
func (p *pool) create(ctx context.Context, ttl time.Duration, name string, lockDelay time.Duration) (*session, error) {
	// The api package's Session().Create leaves a zero lock-delay out of
	// the request, and Consul then uses 15 s; the raw write sends it.
	body := map[string]any{
		"Name":       name,
		"TTL":        ttl.String(),
		"Behavior":   api.SessionBehaviorDelete,
		"LockDelay":  lockDelay.String(),
		"NodeChecks": []string{},
	}
	var out struct{ ID string }
	sent := time.Now()
	if _, err := p.client.Raw().Write("/v1/session/create", body, &out, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		var se api.StatusError
		if errors.As(err, &se) && strings.Contains(se.Body, "Invalid Session TTL") {
			return nil, &lock.TTLError{TTL: ttl, Reason: "refused by the Consul agent: " + se.Body}
		}
		return nil, errs.OpError("create session", "", apiError(err))
	}
	if out.ID == "" {
		return nil, errs.OpError("create session", "", errors.New("no ID in the answer"))
	}
	return &session{id: out.ID, ttl: ttl, renewed: sent}, nil
}

// renew renews session id. ok is false when Consul no longer knows it.
func (p *pool) renew(ctx context.Context, id string) (ok bool, err error) {
	entry, _, err := p.client.Session().Renew(id, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, apiError(err)
	}
	return entry != nil, nil
}

// renewed records that a renewal of s, which a lease holds, was sent at
// sent and succeeded.
func (p *pool) renewed(s *session, sent time.Time) {
	p.mu.Lock()
	if sent.After(s.renewed) {
		s.renewed = sent
	}
	p.mu.Unlock()
}

func (p *pool) destroy(ctx context.Context, id string) error {
	_, err := p.client.Session().Destroy(id, (&api.WriteOptions{}).WithContext(ctx))
	return apiError(err)
}

// putBack returns a session that holds no key to its pool, or destroys it.
func (p *pool) putBack(s *session) {
	p.mu.Lock()
	if !p.closed && p.keepWarm > 0 {
		c := p.classLocked(s.ttl)
		c.lastUse = time.Now()
		if len(c.idle) < maxIdle {
			c.idle = append(c.idle, s)
			if !p.keeping || s.renewed.Add(renewAfter(s.ttl)).Before(p.wakeAt) {
				p.wakeLocked() // the keeper would renew it too late
			}
			p.mu.Unlock()
			return
		}
	}
	p.mu.Unlock()
	p.doom(s.id)
}

// doom destroys session id in the background (at once if the pool is
// closed): it may hold a key and must never be reused.
func (p *pool) doom(id string) {
	p.mu.Lock()
	if !p.closed {
		p.doomed = append(p.doomed, id)
		p.wakeLocked()
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_ = p.destroy(ctx, id) // best effort: an undestroyed session expires
}

// purge forgets the idle sessions of ttl after one of them turned out to be
// gone; those that still exist are destroyed in the background.
func (p *pool) purge(ttl time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.classes[ttl]
	if c == nil || p.closed {
		return
	}
	for _, s := range c.idle {
		p.doomed = append(p.doomed, s.id)
	}
	c.idle = nil
	p.wakeLocked()
}

// wakeLocked wakes the keeper, starting it the first time. p.mu is held.
func (p *pool) wakeLocked() {
	if p.closed {
		return
	}
	if !p.keeping {
		ctx, cancel := context.WithCancel(context.Background())
		p.keeping, p.stop, p.stopped = true, cancel, make(chan struct{})
		go p.keep(ctx)
	}
	select {
	case p.poke <- struct{}{}:
	default:
	}
}

// keep is the keeper: it renews idle sessions before they get stale,
// creates a spare session per TTL in use, destroys doomed sessions and the
// idle sessions of TTLs no longer in use. It returns when ctx ends (close).
func (p *pool) keep(ctx context.Context) {
	defer close(p.stopped)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := p.maintain(ctx)
		p.mu.Lock()
		p.wakeAt = time.Now().Add(next)
		p.mu.Unlock()
		t.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-p.poke:
		case <-t.C:
		}
	}
}

// chores is the keeper's due work, collected under p.mu.
type chores struct {
	destroy []string
	renew   []*session
	create  []*class
	next    time.Duration // until more work falls due
}

// maintain does the keeper's due work and returns how long it may sleep.
func (p *pool) maintain(ctx context.Context) time.Duration {
	w := p.due(time.Now())
	p.destroyAll(ctx, w.destroy)
	renewFailed := p.renewAll(ctx, w.renew)
	createFailed := p.createSpares(ctx, w.create)
	switch {
	case renewFailed || createFailed:
		return time.Second // the agent is failing: retry later, not in a loop
	case len(w.renew) > 0 || len(w.destroy) > 0 || len(w.create) > 0:
		return time.Millisecond // look again with the new state
	}
	return max(w.next, time.Millisecond)
}

// due collects the work that fell due by now: doomed sessions, the idle
// sessions of TTLs no longer in use, renewals and spares to create.
func (p *pool) due(now time.Time) chores {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := chores{destroy: p.doomed, next: time.Hour}
	p.doomed = nil
	for ttl, c := range p.classes {
		if now.Sub(c.lastUse) >= p.keepWarm {
			for _, s := range c.idle {
				w.destroy = append(w.destroy, s.id)
			}
			delete(p.classes, ttl)
			continue
		}
		w.next = min(w.next, c.lastUse.Add(p.keepWarm).Sub(now))
		c.trimLocked(now, &w)
		c.dueLocked(now, &w)
		if len(c.idle)+c.creating < spares {
			c.creating++
			w.create = append(w.create, c)
		}
	}
	return w
}

// trimLocked adds to w.destroy the idle sessions of c beyond the spares
// that went unused for trimAfter (the bottom of the stack, below the
// fewest idle sessions the class had meanwhile), and starts a new window.
// p.mu is held.
func (c *class) trimLocked(now time.Time, w *chores) {
	end := c.lowSince.Add(trimAfter(c.ttl))
	if now.Before(end) {
		if len(c.idle) > spares {
			w.next = min(w.next, end.Sub(now))
		}
		return
	}
	kept := c.idle[:0]
	for i, s := range c.idle {
		if i < c.low-spares && !s.renewing {
			w.destroy = append(w.destroy, s.id)
			continue
		}
		kept = append(kept, s)
	}
	clear(c.idle[len(kept):])
	c.idle = kept
	c.low, c.lowSince = len(c.idle), now
}

// dueLocked adds to w the idle sessions of c due for renewal, and drops
// those whose TTL ran out since their last renewal: Consul may invalidate
// such a session at any moment, even just after renewing it (after a
// server stall its timers fire together with the renewals it accepted),
// so a renewal sent then would not make it safe to hand out. p.mu is held.
func (c *class) dueLocked(now time.Time, w *chores) {
	kept := c.idle[:0]
	for _, s := range c.idle {
		switch due := s.renewed.Add(renewAfter(c.ttl)); {
		case s.renewing:
		case now.Sub(s.renewed) >= c.ttl:
			w.destroy = append(w.destroy, s.id)
			continue
		case due.After(now):
			w.next = min(w.next, due.Sub(now))
		default:
			s.renewing = true
			w.renew = append(w.renew, s)
		}
		kept = append(kept, s)
	}
	clear(c.idle[len(kept):])
	c.idle = kept
}

// destroyAll destroys sessions ids; those it cannot reach before ctx ends
// (close) are left to close.
func (p *pool) destroyAll(ctx context.Context, ids []string) {
	for _, id := range ids {
		if ctx.Err() != nil {
			p.mu.Lock()
			p.doomed = append(p.doomed, id) // close destroys it
			p.mu.Unlock()
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, opTimeout)
		_ = p.destroy(rctx, id) // best effort: an undestroyed session expires
		cancel()
	}
}

// renewAll renews idle sessions and reports whether a renewal failed.
func (p *pool) renewAll(ctx context.Context, ss []*session) (failed bool) {
	for _, s := range ss {
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, opTimeout)
		ok, err := p.renew(rctx, s.id) // cancelling a renew loses nothing
		cancel()
		p.mu.Lock()
		s.renewing = false
		switch {
		case err != nil:
			failed = true
		case !ok:
			p.removeIdleLocked(s) // gone: forget it
		case time.Since(s.renewed) >= s.ttl:
			// The reply came back a TTL or more after the last renewal
			// was sent (a server stall, a slow network): Consul may
			// invalidate the session at any moment, so it is never handed
			// out again. One a take got meanwhile is the lease's to judge.
			if p.removeIdleLocked(s) {
				p.doomed = append(p.doomed, s.id)
			}
		case sent.After(s.renewed):
			s.renewed = sent
		}
		p.mu.Unlock()
	}
	return failed
}

// createSpares creates a spare session for each class and reports whether
// a create failed.
func (p *pool) createSpares(ctx context.Context, cs []*class) (failed bool) {
	for _, c := range cs {
		var s *session
		var err error
		if ctx.Err() == nil {
			// Not cancelled by close: a create cut short could leave a
			// session whose ID nobody knows. close waits for it instead.
			rctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			s, err = p.create(rctx, c.ttl, p.name, p.lockDelay)
			cancel()
		}
		p.mu.Lock()
		c.creating--
		if s != nil {
			if p.closed || p.classes[c.ttl] != c || len(c.idle) >= maxIdle {
				p.doomed = append(p.doomed, s.id)
			} else {
				c.idle = append(c.idle, s)
			}
		}
		p.mu.Unlock()
		failed = failed || err != nil
	}
	return failed
}

// removeIdleLocked takes s out of its pool and reports whether it was
// there. p.mu is held.
func (p *pool) removeIdleLocked(s *session) bool {
	c := p.classes[s.ttl]
	if c == nil {
		return false
	}
	for i, x := range c.idle {
		if x == s {
			c.idle = append(c.idle[:i], c.idle[i+1:]...)
			return true
		}
	}
	return false
}

// close stops the keeper, waits for the creates running detached and
// destroys every idle and doomed session. From then on a returned session
// is destroyed at once and no session is handed out.
func (p *pool) close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	stop, stopped := p.stop, p.stopped
	p.mu.Unlock()
	if stop != nil {
		stop()
		<-stopped
	}
	p.creates.Wait() // their sessions are destroyed now that p is closed
	p.mu.Lock()
	ids := p.doomed
	p.doomed = nil
	for _, c := range p.classes {
		for _, s := range c.idle {
			ids = append(ids, s.id)
		}
	}
	p.classes = make(map[time.Duration]*class)
	p.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	var err error
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, id := range ids {
		if derr := p.destroy(ctx, id); derr != nil && err == nil {
			err = errs.OpError("close", "", fmt.Errorf("destroying an idle session: %w", derr))
		}
	}
	return err
}
