package consullock

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
)

type leaseState int

const (
	held     leaseState = iota
	released            // by Release or Complete
	lost                // the server said it no longer holds
)

// lease is one holding: a key locked by a session of its own.
type lease struct {
	l     *Locker
	key   string // as the user passed it
	path  string // the Consul key
	fp    []byte // the fingerprint kept in the key's value (ClaimFingerprint)
	token uint64

	op sync.Mutex // serializes Refresh, Release and Complete

	mu       sync.Mutex // guards the fields below
	sess     *session
	index    uint64 // the key's ModifyIndex of this holding
	deadline time.Time
	state    leaseState
	suspect  bool // a write failed in transit: the holding must be verified
	writing  bool // a write of this lease's own (move, release, complete) is in flight
	lostCh   chan struct{}
	w        *watcher
}

// Key returns the key as it was passed to TryAcquire.
func (le *lease) Key() string { return le.key }

// Token returns the key's Consul ModifyIndex at the take: a Raft index.
func (le *lease) Token() uint64 { return le.token }

// Deadline returns until when the lease is held at the least, by the local
// monotonic clock: when its session was created or last renewed (before the
// request was sent) plus the session's TTL.
func (le *lease) Deadline() time.Time {
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.deadline
}

func (le *lease) notHeld(why string) error {
	return fmt.Errorf("consullock: key %q: %s: %w", le.key, why, lock.ErrNotHeld)
}

// Refresh extends the lease to ttl from now (rounded up to whole seconds).
// The same TTL renews the session; another TTL moves the lock to a session
// with that TTL in one owner-checked transaction.
func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	l := le.l
	sttl, err := l.sessionTTL(ttl)
	if err != nil {
		return err
	}
	le.op.Lock()
	defer le.op.Unlock()
	le.mu.Lock()
	state, s, index, suspect := le.state, le.sess, le.index, le.suspect
	le.mu.Unlock()
	if state != held {
		return le.notHeld("refresh after release or loss")
	}
	if suspect {
		if err := le.verify(ctx, s, index); err != nil {
			return err
		}
	}
	if sttl == s.ttl {
		sent := time.Now()
		ok, err := l.pool.renew(ctx, s.id)
		if err != nil {
			return fmt.Errorf("consullock: refresh %q: %w", le.key, err)
		}
		if !ok {
			le.lose(s)
			return le.notHeld("its session expired")
		}
		le.mu.Lock()
		le.deadline = sent.Add(sttl)
		le.mu.Unlock()
		l.pool.renewed(s, sent)
		return nil
	}
	return le.move(ctx, s, sttl)
}

// move hands the lock from session old to a session with ttl: unlock by the
// old session and lock by the new one, in one transaction.
func (le *lease) move(ctx context.Context, old *session, ttl time.Duration) error {
	l := le.l
	for attempt := 0; ; attempt++ {
		ns, renewed, err := l.pool.get(ctx, ttl)
		if err != nil {
			return err
		}
		le.setWriting(true)
		ok, resp, err := l.txn(ctx, api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVUnlock, Key: le.path, Session: old.id}},
			{KV: &api.KVTxnOp{Verb: api.KVLock, Key: le.path, Session: ns.id, Value: lockValue(ttl, le.fp)}},
		})
		le.mu.Lock()
		le.writing = false
		switch {
		case err != nil:
			// The move may have happened: the new session is destroyed
			// (freeing the key if it got it) and the holding is verified
			// before the next write.
			le.suspect = true
			le.mu.Unlock()
			l.pool.doom(ns.id)
			return fmt.Errorf("consullock: refresh %q: %w", le.key, err)
		case ok:
			le.sess = ns
			le.index = resp.Results[len(resp.Results)-1].KV.ModifyIndex
			le.deadline = renewed.Add(ttl)
			le.mu.Unlock()
			l.pool.putBack(old) // it holds nothing now
			return nil
		}
		le.mu.Unlock()
		f := failure(resp.Errors)
		switch {
		case f.op == 1 && f.invalidSession() && attempt < 2:
			l.pool.purge(ttl) // the pooled session is gone: forget it, try another
			continue
		case f.denied():
			l.pool.putBack(ns)
			return fmt.Errorf("%w: refresh %q: %s", ErrPermissionDenied, le.key, f.what)
		case f.op == 0:
			l.pool.putBack(ns)
			le.lose(old)
			return le.notHeld("taken or expired")
		}
		l.pool.putBack(ns)
		return fmt.Errorf("consullock: refresh %q: transaction refused: %s", le.key, f.what)
	}
}

// verify checks, after a write whose outcome is unknown, that session s
// still holds the key at index.
func (le *lease) verify(ctx context.Context, s *session, index uint64) error {
	ok, resp, err := le.l.txn(ctx, api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: le.path, Session: s.id}},
		{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: le.path, Index: index}},
	})
	if err != nil {
		return fmt.Errorf("consullock: verifying the holding of %q: %w", le.key, err)
	}
	if !ok {
		if f := failure(resp.Errors); f.denied() {
			return fmt.Errorf("%w: %s", ErrPermissionDenied, f.what)
		}
		le.lose(s)
		return le.notHeld("no longer held after an interrupted request")
	}
	le.mu.Lock()
	le.suspect = false
	le.mu.Unlock()
	return nil
}

// Release deletes the key if this lease's session still holds it at this
// lease's index, and keeps the session for the next take.
func (le *lease) Release(ctx context.Context) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	le.op.Lock()
	defer le.op.Unlock()
	le.mu.Lock()
	state, s, index := le.state, le.sess, le.index
	le.mu.Unlock()
	if state != held {
		return le.notHeld("release after release or loss")
	}
	l := le.l
	le.setWriting(true)
	defer le.setWriting(false)
	ok, resp, err := l.txn(ctx, api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: le.path, Session: s.id}},
		{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: le.path, Index: index}},
	})
	if err != nil {
		le.mu.Lock()
		le.suspect = true
		le.mu.Unlock()
		return fmt.Errorf("consullock: release %q: %w", le.key, err)
	}
	if !ok {
		f := failure(resp.Errors)
		if f.denied() {
			return fmt.Errorf("%w: release %q: %s", ErrPermissionDenied, le.key, f.what)
		}
		le.lose(s)
		return le.notHeld("expired or taken before release")
	}
	le.finish(s)
	return nil
}

// setWriting marks a write of the lease's own in flight, so that its watch
// does not take the key's change for a loss.
func (le *lease) setWriting(on bool) {
	le.mu.Lock()
	le.writing = on
	le.mu.Unlock()
}

// finish ends a lease whose key its own write deleted and keeps its
// session for the next take, unless the lease was meanwhile found lost.
func (le *lease) finish(s *session) {
	if le.end(released) {
		le.l.pool.putBack(s)
	} else {
		le.l.pool.doom(s.id)
	}
}

// lose marks the lease lost, closes its Lost channel, stops its watch and
// destroys its session (which may still exist but must not be reused).
func (le *lease) lose(s *session) {
	if le.end(lost) {
		le.l.pool.doom(s.id)
	}
}

// end moves a held lease to state st and stops its watch; it reports
// whether the lease was held.
func (le *lease) end(st leaseState) bool {
	le.mu.Lock()
	if le.state != held {
		le.mu.Unlock()
		return false
	}
	le.state = st
	if st == lost && le.lostCh != nil {
		close(le.lostCh)
	}
	w := le.w
	le.w = nil
	le.mu.Unlock()
	if w != nil {
		w.halt()
	}
	return true
}

// Lost returns a channel that is closed when the lease is found lost: its
// key deleted (the session expired) or held by another session, or a
// Refresh or Release reported [lock.ErrNotHeld]. The first call starts a
// blocking query on the key, stopped by Release and by Locker.Close; after
// a successful Release the channel is never closed.
func (le *lease) Lost() <-chan struct{} {
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.lostCh != nil {
		return le.lostCh
	}
	le.lostCh = make(chan struct{})
	switch le.state {
	case lost:
		close(le.lostCh)
	case held:
		le.w = le.l.watchers.watch(le)
	}
	return le.lostCh
}
