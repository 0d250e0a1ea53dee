package etcdlock

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// lease is one holding of a lock: the lock key, created at revision token,
// bound to the etcd lease g.
type lease struct {
	l     *Locker
	key   string // the caller's key
	lk    string // the etcd lock key
	token uint64 // the lock key's CreateRevision
	fp    []byte // the fingerprint kept in the lock key's value (ClaimFingerprint)

	// mu serialises Refresh, Release and Complete on this lease, so that
	// a lease returned to the pool is never renewed on this holding's
	// behalf while it serves another.
	mu sync.Mutex
	g  grant // the etcd lease bound to lk
	// strays are leases that an interrupted Refresh may have bound lk to.
	strays []grant
	// doubt is set when a Release or Complete failed with an unknown
	// outcome: the key may be gone while le.g lives on, so renewing le.g
	// proves nothing, and the next Refresh must check the key itself.
	doubt bool
	done  bool // released, completed or known lost
	// The loss watch (Lost, below): lost is made by Lost; ended is set when
	// the lease's own Release or Complete deleted the key; unwatch stops
	// the watch.
	lost    chan struct{}
	ended   bool
	unwatch context.CancelFunc
}

func (le *lease) Key() string   { return le.key }
func (le *lease) Token() uint64 { return le.token }

// Deadline returns the time until which the lock is held at least, by the
// local monotonic clock: when the grant or latest renewal of its etcd lease
// was sent, plus the TTL etcd granted.
func (le *lease) Deadline() time.Time {
	le.mu.Lock()
	defer le.mu.Unlock()
	dl := le.g.expiry()
	for _, s := range le.strays { // the key may be bound to one of them
		if s.expiry().Before(dl) {
			dl = s.expiry()
		}
	}
	return dl
}

// Refresh extends the lock to at least ttl from now. If ttl asks for the
// same lease TTL as the lock has, it renews the etcd lease (one request);
// otherwise, or when an earlier Release, Complete or move of this lease
// failed with an unknown outcome, it moves the lock key, in one transaction
// guarded by the key's creation revision, to a lease with the new TTL, which
// also checks that the key is still this lease's. A lease that etcd no
// longer knows, or a lock key that is gone or belongs to another holder,
// gives an error matching lock.ErrNotHeld.
//
// Renewing touches only this holding's own etcd lease, which no other
// holding shares; a lock key deleted by hand (etcdctl del) outside idemlock
// while its lease lives is noticed by Release and by a Refresh with another
// TTL, not by a same-TTL Refresh.
func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	l := le.l
	req, err := l.leaseSeconds(ttl)
	if err != nil {
		return err
	}
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.done {
		return l.notHeld("refresh", le.key, nil)
	}
	if req == le.g.req && len(le.strays) == 0 && !le.doubt {
		sent := time.Now()
		resp, err := l.leases.KeepAliveOnce(ctx, le.g.id)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			le.done = true
			return l.notHeld("refresh", le.key, err)
		case err != nil:
			return l.opError("refresh", le.key, ctx, err)
		}
		le.g.base, le.g.ttl = sent, resp.TTL
		return nil
	}
	return le.move(ctx, ttl, req)
}

// move binds the lock key to a lease of req seconds. le.mu is held.
func (le *lease) move(ctx context.Context, ttl time.Duration, req int64) error {
	l := le.l
	for attempt := 0; ; attempt++ {
		g, err := l.pool.get(ctx, ttl, req)
		if err != nil {
			return l.opError("refresh", le.key, ctx, err)
		}
		resp, err := l.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(le.lk), "=", int64(le.token))).
			Then(clientv3.OpPut(le.lk, lockValue(g.ttl, le.fp), clientv3.WithLease(g.id))).
			Commit()
		switch {
		case err != nil && errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0:
			continue // the new lease died in the pool: refused whole
		case err != nil:
			// The key may now be bound to g: keep it with the holding
			// until a later outcome is certain.
			le.strays = append(le.strays, g)
			return l.opError("refresh", le.key, ctx, err)
		case !resp.Succeeded:
			l.pool.put(g)
			le.done = true
			return l.notHeld("refresh", le.key, nil)
		}
		// The key left the old lease (and any strays): they serve again.
		l.pool.put(le.g)
		le.releaseStrays()
		le.g = g
		le.doubt = false
		return nil
	}
}

// releaseStrays returns the strays to the pool once the lock key is known to
// be bound to none of them. le.mu is held.
func (le *lease) releaseStrays() {
	for _, s := range le.strays {
		le.l.pool.put(s)
	}
	le.strays = nil
}

// Release deletes the lock key in one transaction guarded by its creation
// revision, so it never deletes a newer holder's key; the etcd lease goes
// back to the Locker's pool. If the key is gone or belongs to another
// holding the error matches lock.ErrNotHeld.
func (le *lease) Release(ctx context.Context) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	l := le.l
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.done {
		return l.notHeld("release", le.key, nil)
	}
	resp, err := l.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(le.lk), "=", int64(le.token))).
		Then(clientv3.OpDelete(le.lk)).
		Commit()
	if err != nil {
		le.doubt = true // the key may be gone: the next Refresh checks it
		return l.opError("release", le.key, ctx, err)
	}
	le.done = true
	if !resp.Succeeded {
		return l.notHeld("release", le.key, nil)
	}
	le.stopLossWatch()
	l.pool.put(le.g)
	le.releaseStrays()
	return nil
}

var _ lock.LossNotifier = (*lease)(nil)

// Lost returns a channel that is closed when the lease's lock key is
// deleted other than by the lease's own Release or Complete: deleted by
// hand or by ForceRelease, or by etcd when the lease expired. The first call
// opens a watch on the key from the revision after the take (on the
// Locker's shared watch stream), so lock.KeepAlive learns of the loss
// within one watch event instead of at its next refresh. The watch ends
// with the lease's Release or Complete, with the key's deletion and with
// Locker.Close; if it breaks (the revision after the take was compacted, or
// the Locker was closed) the channel is left open and renewal alone tells.
func (le *lease) Lost() <-chan struct{} {
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.lost != nil {
		return le.lost
	}
	le.lost = make(chan struct{})
	if le.done {
		if !le.ended {
			close(le.lost)
		}
		return le.lost
	}
	if le.l.usable() != nil {
		return le.lost
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	le.unwatch = cancel
	go le.watchLoss(ctx, cancel)
	return le.lost
}

// watchLoss opens the watch and closes le.lost on the first deletion of the
// lock key unless the lease ended it itself. It opens the watch on its own
// goroutine because Watch waits until the watch stream is set up, which a
// partition can delay for as long as it lasts: Lost must return at once,
// and must not hold le.mu meanwhile (Deadline and Refresh need it).
func (le *lease) watchLoss(ctx context.Context, cancel context.CancelFunc) {
	defer cancel()
	wch := le.l.watcher.Watch(ctx, le.lk, clientv3.WithRev(int64(le.token)+1), clientv3.WithFilterPut())
	for resp := range wch {
		if resp.Err() != nil {
			return
		}
		for _, ev := range resp.Events {
			if ev.Type != mvccpb.DELETE {
				continue
			}
			// A Release or Complete holds le.mu until it has set ended,
			// so its own deletion is never taken for a loss.
			le.mu.Lock()
			if !le.ended {
				le.done = true
				close(le.lost)
			}
			le.mu.Unlock()
			return
		}
	}
}

// stopLossWatch ends the watch of Lost after the lease ended the holding
// itself. le.mu is held.
func (le *lease) stopLossWatch() {
	le.ended = true
	if le.unwatch != nil {
		le.unwatch()
	}
}
