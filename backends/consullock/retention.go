package consullock

import (
	"context"
	"sync"
	"time"
)

// retentionSession is the session that idempotency records of one
// retention are locked by, so that Consul deletes them when it expires.
type retentionSession struct {
	id      string
	created time.Time // when its create was sent
	width   time.Duration
}

// retention owns the retention sessions: one per retention in use, shared
// by the records completed within a bucket of width after its create. Its
// mutex guards only its own map; sessions are created (and, when nobody
// will use them, destroyed) through the pool.
type retention struct {
	pool *pool
	name string // of retention sessions

	mu     sync.Mutex
	closed bool
	byTTL  map[time.Duration]*retentionSession
}

func newRetention(p *pool, cfg config) *retention {
	return &retention{pool: p, name: cfg.name + " retention", byTTL: make(map[time.Duration]*retentionSession)}
}

// session returns the session records of retention rttl are bound to,
// creating one when the current one is older than width. Its TTL is
// rttl + width (at most 24 h), so a record bound to it is kept at least
// rttl by Consul's session contract. It is never renewed or destroyed.
func (r *retention) session(ctx context.Context, rttl, width time.Duration) (*retentionSession, error) {
	now := time.Now()
	r.mu.Lock()
	rs := r.byTTL[rttl]
	r.mu.Unlock()
	if rs != nil && now.Sub(rs.created) < width {
		return rs, nil
	}
	adopt := func(s *session) {
		// Created for a Complete that gave up: bucket it, or destroy a
		// session that would hold no record.
		r.mu.Lock()
		closed := r.closed
		r.mu.Unlock()
		if width == 0 || closed {
			r.pool.doom(s.id)
			return
		}
		r.keep(rttl, width, s)
	}
	s, err := r.pool.createDetached(ctx, min(rttl+width, MaxTTL), r.name, 0, adopt)
	if err != nil {
		return nil, err
	}
	return r.keep(rttl, width, s), nil
}

// keep makes s the session of retention rttl unless a newer one is there.
// With width 0 (short retentions) it is a session per record, kept by
// nobody.
func (r *retention) keep(rttl, width time.Duration, s *session) *retentionSession {
	rs := &retentionSession{id: s.id, created: s.renewed, width: width}
	if width == 0 {
		return rs
	}
	r.mu.Lock()
	if cur := r.byTTL[rttl]; cur == nil || cur.created.Before(rs.created) {
		r.byTTL[rttl] = rs
	}
	r.mu.Unlock()
	return rs
}

// forget drops rs, found gone, unless a newer session replaced it.
func (r *retention) forget(rttl time.Duration, rs *retentionSession) {
	r.mu.Lock()
	if r.byTTL[rttl] == rs {
		delete(r.byTTL, rttl)
	}
	r.mu.Unlock()
}

// close makes a session created for a Complete that gave up be destroyed
// rather than kept. The sessions holding records are left to expire with
// them.
func (r *retention) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
}
