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

// session is one Consul session. Its fields are guarded by Locker.mu while
// it is idle in a pool; a lease owns it while it holds it.
type session struct {
	id       string
	ttl      time.Duration
	renewed  time.Time // when its create or latest successful renew was sent
	renewing bool      // the keeper is renewing it right now
}

// class is the pool of idle sessions of one TTL.
type class struct {
	ttl      time.Duration
	idle     []*session
	lastUse  time.Time
	creating int // spares the keeper is creating
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

// getSession returns a fresh idle session of ttl, or creates one, and when
// it was last renewed (the base of a lease's deadline).
func (l *Locker) getSession(ctx context.Context, ttl time.Duration) (*session, time.Time, error) {
	now := time.Now()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, time.Time{}, ErrClosed
	}
	if l.cfg.keepWarm > 0 {
		c := l.classes[ttl]
		if c == nil {
			c = &class{ttl: ttl}
			l.classes[ttl] = c
		}
		c.lastUse = now
		for i := len(c.idle) - 1; i >= 0; i-- {
			s := c.idle[i]
			// A session the keeper is renewing right now may be taken: the
			// renewal can only make it live longer than its deadline says.
			if now.Sub(s.renewed) > maxAge(ttl) {
				continue
			}
			c.idle = append(c.idle[:i], c.idle[i+1:]...)
			if len(c.idle)+c.creating < spares {
				l.wakeLocked()
			}
			renewed := s.renewed
			l.mu.Unlock()
			return s, renewed, nil
		}
		l.wakeLocked() // nothing fresh: let the keeper renew or replace
	}
	l.mu.Unlock()
	s, err := l.createDetached(ctx, ttl, l.cfg.name, l.cfg.lockDelay, l.putBack)
	if err != nil {
		return nil, time.Time{}, err
	}
	return s, s.renewed, nil
}

// createDetached creates a session on a goroutine of the Locker's, with a
// context of its own, and returns when it is created or ctx ends. A
// create that ctx abandoned still finishes, and the session goes to
// adopt, so that cancelling a caller never leaves a session nobody knows.
// Close waits for such goroutines.
func (l *Locker) createDetached(ctx context.Context, ttl time.Duration, name string, lockDelay time.Duration, adopt func(*session)) (*session, error) {
	type result struct {
		s   *session
		err error
	}
	var (
		mu        sync.Mutex
		abandoned bool
		done      = make(chan result, 1)
	)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrClosed
	}
	l.creates.Add(1)
	l.mu.Unlock()
	go func() {
		defer l.creates.Done()
		cctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		s, err := l.createSession(cctx, ttl, name, lockDelay)
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

// createSession creates a session with Consul's API: behavior delete, no
// health checks, the given TTL and lock-delay.
func (l *Locker) createSession(ctx context.Context, ttl time.Duration, name string, lockDelay time.Duration) (*session, error) {
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
	if _, err := l.client.Raw().Write("/v1/session/create", body, &out, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		var se api.StatusError
		if errors.As(err, &se) && strings.Contains(se.Body, "Invalid Session TTL") {
			return nil, &lock.TTLError{TTL: ttl, Reason: "refused by the Consul agent: " + se.Body}
		}
		return nil, fmt.Errorf("consullock: creating a session: %w", apiError(err))
	}
	if out.ID == "" {
		return nil, errors.New("consullock: creating a session: no ID in the answer")
	}
	return &session{id: out.ID, ttl: ttl, renewed: sent}, nil
}

// renew renews session id. ok is false when Consul no longer knows it.
func (l *Locker) renew(ctx context.Context, id string) (ok bool, err error) {
	entry, _, err := l.client.Session().Renew(id, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return false, apiError(err)
	}
	return entry != nil, nil
}

func (l *Locker) destroy(ctx context.Context, id string) error {
	_, err := l.client.Session().Destroy(id, (&api.WriteOptions{}).WithContext(ctx))
	return apiError(err)
}

// putBack returns a session that holds no key to its pool, or destroys it.
func (l *Locker) putBack(s *session) {
	l.mu.Lock()
	if !l.closed && l.cfg.keepWarm > 0 {
		c := l.classes[s.ttl]
		if c == nil {
			c = &class{ttl: s.ttl}
			l.classes[s.ttl] = c
		}
		c.lastUse = time.Now()
		if len(c.idle) < maxIdle {
			c.idle = append(c.idle, s)
			if !l.keeping || s.renewed.Add(renewAfter(s.ttl)).Before(l.wakeAt) {
				l.wakeLocked() // the keeper would renew it too late
			}
			l.mu.Unlock()
			return
		}
	}
	l.mu.Unlock()
	l.doom(s.id)
}

// doom destroys session id in the background (at once if the Locker is
// closed): it may hold a key and must never be reused.
func (l *Locker) doom(id string) {
	l.mu.Lock()
	if !l.closed {
		l.doomed = append(l.doomed, id)
		l.startKeeperLocked()
		l.wakeLocked()
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_ = l.destroy(ctx, id) // best effort: an undestroyed session expires
}

// wakeLocked wakes the keeper. l.mu is held.
func (l *Locker) wakeLocked() {
	l.startKeeperLocked()
	select {
	case l.poke <- struct{}{}:
	default:
	}
}

// startKeeperLocked starts the keeper goroutine once. l.mu is held.
func (l *Locker) startKeeperLocked() {
	if l.keeping || l.closed {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.keeping, l.stop, l.stopped = true, cancel, make(chan struct{})
	go l.keep(ctx)
}

// keep is the keeper: it renews idle sessions before they get stale,
// creates a spare session per TTL in use, destroys doomed sessions and the
// idle sessions of TTLs no longer in use. It returns when ctx ends (Close).
func (l *Locker) keep(ctx context.Context) {
	defer close(l.stopped)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := l.maintain(ctx)
		l.mu.Lock()
		l.wakeAt = time.Now().Add(next)
		l.mu.Unlock()
		t.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-l.poke:
		case <-t.C:
		}
	}
}

// maintain does the keeper's due work and returns how long it may sleep.
func (l *Locker) maintain(ctx context.Context) time.Duration {
	now := time.Now()
	next := time.Hour
	var (
		renew   []*session
		destroy []string
		create  []*class
	)
	l.mu.Lock()
	destroy, l.doomed = l.doomed, nil
	for ttl, c := range l.classes {
		if now.Sub(c.lastUse) >= l.cfg.keepWarm {
			for _, s := range c.idle {
				destroy = append(destroy, s.id)
			}
			delete(l.classes, ttl)
			continue
		}
		next = min(next, c.lastUse.Add(l.cfg.keepWarm).Sub(now))
		for _, s := range c.idle {
			if s.renewing {
				continue
			}
			due := s.renewed.Add(renewAfter(ttl))
			if due.After(now) {
				next = min(next, due.Sub(now))
				continue
			}
			s.renewing = true
			renew = append(renew, s)
		}
		if len(c.idle)+c.creating < spares {
			c.creating++
			create = append(create, c)
		}
	}
	l.mu.Unlock()

	for _, id := range destroy {
		if ctx.Err() != nil {
			l.mu.Lock()
			l.doomed = append(l.doomed, id) // Close destroys it
			l.mu.Unlock()
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, opTimeout)
		_ = l.destroy(rctx, id) // best effort: an undestroyed session expires
		cancel()
	}
	failed := false
	for _, s := range renew {
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, opTimeout)
		ok, err := l.renew(rctx, s.id) // cancelling a renew loses nothing
		cancel()
		l.mu.Lock()
		s.renewing = false
		switch {
		case err != nil:
			failed = true
		case ok:
			if sent.After(s.renewed) {
				s.renewed = sent
			}
		default:
			l.removeIdleLocked(s) // gone: forget it
		}
		l.mu.Unlock()
	}
	for _, c := range create {
		var s *session
		var err error
		if ctx.Err() == nil {
			// Not cancelled by Close: a create cut short could leave a
			// session whose ID nobody knows. Close waits for it instead.
			rctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			s, err = l.createSession(rctx, c.ttl, l.cfg.name, l.cfg.lockDelay)
			cancel()
		}
		l.mu.Lock()
		c.creating--
		if s != nil {
			if l.closed || l.classes[c.ttl] != c || len(c.idle) >= maxIdle {
				l.doomed = append(l.doomed, s.id)
			} else {
				c.idle = append(c.idle, s)
			}
		}
		l.mu.Unlock()
		if err != nil {
			failed = true
		}
	}
	switch {
	case failed:
		return time.Second // the agent is failing: retry later, not in a loop
	case len(renew) > 0 || len(destroy) > 0 || len(create) > 0:
		return time.Millisecond // look again with the new state
	}
	return max(next, time.Millisecond)
}

// purge forgets the idle sessions of ttl after one of them turned out to be
// gone; those that still exist are destroyed in the background.
func (l *Locker) purge(ttl time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.classes[ttl]
	if c == nil || l.closed {
		return
	}
	for _, s := range c.idle {
		l.doomed = append(l.doomed, s.id)
	}
	c.idle = nil
	l.wakeLocked()
}

// removeIdleLocked takes s out of its pool if it is there. l.mu is held.
func (l *Locker) removeIdleLocked(s *session) {
	c := l.classes[s.ttl]
	if c == nil {
		return
	}
	for i, x := range c.idle {
		if x == s {
			c.idle = append(c.idle[:i], c.idle[i+1:]...)
			return
		}
	}
}
