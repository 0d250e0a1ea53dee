package consullock

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// lease is one holding: a key locked by a session of its own. Key, token,
// state, deadline and the serialisation of Refresh, Release and Complete
// come from driver.Lease; the lease becomes Lost only in lose, under mu,
// which also records it in lost (a Release or Complete that then reports
// ErrNotHeld moves the state on to Released).
type lease struct {
	driver.Lease
	l    *Locker
	path string // the Consul key
	fp   []byte // the fingerprint kept in the key's value (ClaimFingerprint)
	// entry is the queue entry its take marked (WithQueue), deleted by the
	// write that ends the lease; "" for an unqueued take.
	entry string

	mu      sync.Mutex // guards the fields below, and the move to Lost
	sess    *session
	index   uint64 // the key's ModifyIndex of this holding
	suspect bool   // a write failed in transit: the holding must be verified
	writing bool   // a write of this lease's own (move, release, complete) is in flight
	lost    bool   // found lost: Lost's channel is closed
	lostCh  chan struct{}
	w       *watcher
}

// Refresh extends the lease to ttl from now (rounded up to whole seconds).
// The same TTL renews the session; another TTL moves the lock to a session
// with that TTL in one owner-checked transaction.
func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	sttl, err := le.l.sessionTTL(ttl)
	if err != nil {
		return err
	}
	return le.Serial(ctx, func() error {
		if err := le.Check("refresh"); err != nil {
			return err
		}
		s, err := le.holding(ctx, "refresh")
		if err != nil {
			return err
		}
		if sttl != s.ttl {
			return le.move(ctx, s, sttl)
		}
		sent := time.Now()
		ok, err := le.l.pool.renew(ctx, s.id)
		if err != nil {
			return le.OpError("refresh", err)
		}
		if !ok {
			le.lose(s)
			return le.NotHeldWhy("refresh", "its session expired")
		}
		le.Extend(sent, sttl)
		le.l.pool.renewed(s, sent)
		return nil
	})
}

// holding returns the lease's session, after checking that it still holds
// the key when a write's outcome was unknown.
func (le *lease) holding(ctx context.Context, op string) (*session, error) {
	le.mu.Lock()
	s, index, suspect := le.sess, le.index, le.suspect
	le.mu.Unlock()
	if !suspect {
		return s, nil
	}
	ok, resp, err := le.l.txn(ctx, api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: le.path, Session: s.id}},
		{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: le.path, Index: index}},
	})
	if err != nil {
		return nil, le.OpError(op, err)
	}
	if !ok {
		if f := failure(resp.Errors); f.denied() {
			return nil, denied(op, le.Key(), f.what)
		}
		le.lose(s)
		return nil, le.NotHeldWhy(op, "no longer held after an interrupted request")
	}
	le.mu.Lock()
	le.suspect = false
	le.mu.Unlock()
	return s, nil
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
		sent := time.Now()
		ok, resp, err := le.write(ctx, api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVUnlock, Key: le.path, Session: old.id}},
			{KV: &api.KVTxnOp{Verb: api.KVLock, Key: le.path, Session: ns.id, Value: lockValue(ttl, le.fp)}},
		})
		switch {
		case err != nil:
			// The move may have happened: the new session is destroyed
			// (freeing the key if it got it) and the holding is verified
			// before the next write.
			l.pool.doom(ns.id)
			return le.OpError("refresh", err)
		case ok:
			le.mu.Lock()
			le.sess = ns
			le.index = resp.Results[len(resp.Results)-1].KV.ModifyIndex
			le.mu.Unlock()
			// The new session lives at least ttl from its last renewal,
			// whatever the old one's deadline was.
			le.Extend(sent, renewed.Add(ttl).Sub(sent))
			l.pool.putBack(old) // it holds nothing now
			return nil
		}
		f := failure(resp.Errors)
		switch {
		case f.op == 1 && f.invalidSession() && attempt < 2:
			l.pool.purge(ttl) // the pooled session is gone: forget it, try another
			continue
		case f.denied():
			l.pool.putBack(ns)
			return denied("refresh", le.Key(), f.what)
		case f.op == 0:
			l.pool.putBack(ns)
			le.lose(old)
			return le.NotHeldWhy("refresh", "taken or expired")
		}
		l.pool.putBack(ns)
		return le.OpError("refresh", f.refused())
	}
}

// write runs ops, a write of the lease's own, marked in flight so that its
// watch does not take the key's change for a loss. An error means the
// outcome is unknown: the holding is verified before the next write.
func (le *lease) write(ctx context.Context, ops api.TxnOps) (bool, *api.TxnResponse, error) {
	le.mu.Lock()
	le.writing = true
	le.mu.Unlock()
	ok, resp, err := le.l.txn(ctx, ops)
	le.mu.Lock()
	le.writing = false
	le.suspect = le.suspect || err != nil
	le.mu.Unlock()
	return ok, resp, err
}

// Release deletes the key if this lease's session still holds it at this
// lease's index, and keeps the session for the next take.
func (le *lease) Release(ctx context.Context) error {
	return le.End(ctx, "release", func() error {
		if le.State() == driver.Lost {
			le.dropEntry(ctx)
			return le.NotHeldWhy("release", "lost before release")
		}
		le.mu.Lock()
		s, index := le.sess, le.index
		le.mu.Unlock()
		ok, resp, err := le.write(ctx, le.withEntry(api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: le.path, Session: s.id}},
			{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: le.path, Index: index}},
		}))
		return le.ended(ok, resp, err, "release", s)
	})
}

// ended settles an ending write (Release, Complete) of session s that
// checked the holding in its first two operations: done, the session goes
// back to the pool; refused by them, the lease is lost; failed in transit,
// its outcome is unknown and the lease stays as it was.
func (le *lease) ended(ok bool, resp *api.TxnResponse, err error, op string, s *session) error {
	switch {
	case err != nil:
		return le.OpError(op, err)
	case ok:
		le.stopWatch()
		le.l.pool.putBack(s)
		return nil
	}
	f := failure(resp.Errors)
	if f.denied() {
		return denied(op, le.Key(), f.what)
	}
	if f.op > 1 {
		return le.OpError(op, f.refused())
	}
	le.lose(s)
	le.dropEntry(context.Background())
	return le.NotHeldWhy(op, "expired or taken before")
}

// withEntry appends to the ops of a write that ends the lease the deletion
// of its marked queue entry, if it has one.
func (le *lease) withEntry(ops api.TxnOps) api.TxnOps {
	if le.entry != "" {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: le.entry}})
	}
	return ops
}

// dropEntry deletes the marked queue entry of a lease that ended without
// the write that deletes it. Best effort: otherwise the next take behind
// it deletes it, or it goes with its Locker's queue session.
func (le *lease) dropEntry(ctx context.Context) {
	if le.entry == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	_, _ = le.l.client.KV().Delete(le.entry, (&api.WriteOptions{}).WithContext(ctx))
}

// lose marks the lease lost, closes its Lost channel, stops its watch and
// destroys its session (which may still exist but must not be reused).
func (le *lease) lose(s *session) {
	le.mu.Lock()
	if !le.Lose() {
		le.mu.Unlock()
		return
	}
	le.lost = true
	if le.lostCh != nil {
		close(le.lostCh)
	}
	le.mu.Unlock()
	le.stopWatch()
	le.l.pool.doom(s.id)
}

// stopWatch stops the lease's watch, if it runs, and waits for it.
func (le *lease) stopWatch() {
	le.mu.Lock()
	w := le.w
	le.w = nil
	le.mu.Unlock()
	if w != nil {
		w.halt()
	}
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
	switch st := le.State(); {
	case le.lost:
		close(le.lostCh)
	case st == driver.Held || st == driver.Releasing:
		le.w = le.l.watchers.watch(le)
	}
	return le.lostCh
}
