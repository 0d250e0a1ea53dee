package etcdlock

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var _ lock.LossNotifier = (*lease)(nil)

// lease is one holding of a lock: the lock key, created at revision token,
// bound to the etcd lease g. Key, Token, the state and the serialisation of
// Refresh, Release and Complete (so that a lease returned to the pool is
// never renewed on this holding's behalf while it serves another) come from
// driver.Lease.
type lease struct {
	driver.Lease
	l  *Locker
	lk string // the etcd lock key
	fp []byte // the fingerprint kept in the lock key's value (ClaimFingerprint)

	// doubt is set when a Release or Complete failed with an unknown
	// outcome: the key may be gone while g lives on, so renewing g
	// proves nothing, and the next Refresh must check the key itself.
	// Used in the lease's turn (driver.Lease.Serial) only.
	doubt bool

	// mu guards what Deadline and the loss watch read. g and strays
	// change in the lease's turn only, under mu; mu is never held across
	// a request.
	mu sync.Mutex
	g  grant // the etcd lease bound to lk
	// strays are leases that an interrupted Refresh may have bound lk to.
	strays []grant
	// The loss watch: lost is made by Lost; ended is set when the lease's
	// own Release or Complete deleted the key; unwatch stops the watch.
	lost    chan struct{}
	ended   bool
	unwatch context.CancelFunc
}

func newLease(l *Locker, key, lk string, token uint64, g grant, fp []byte) *lease {
	le := &lease{l: l, lk: lk, g: g, fp: fp}
	le.Init(&l.gate, key, token, g.base, time.Duration(g.ttl)*time.Second)
	return le
}

// Deadline returns the time until which the lock is held at least, by the
// local monotonic clock: when the grant or latest renewal of its etcd lease
// was sent, plus the TTL etcd granted (pooled leases are granted before the
// take, so this is not the take's send time plus its TTL).
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
	req, err := le.l.leaseSeconds(ttl)
	if err != nil {
		return err
	}
	return le.Serial(ctx, func() error {
		if err := le.Check("refresh"); err != nil {
			return err
		}
		if req != le.g.req || len(le.strays) > 0 || le.doubt {
			return le.move(ctx, ttl, req)
		}
		sent := time.Now()
		resp, err := le.l.leases.KeepAliveOnce(ctx, le.g.id)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			le.Lose()
			return le.NotHeldWhy("refresh", "its etcd lease expired or was revoked")
		case err != nil:
			return errs.OpErrorCtx(ctx, "refresh", le.Key(), err)
		}
		le.mu.Lock()
		le.g.base, le.g.ttl = sent, resp.TTL
		le.mu.Unlock()
		return nil
	})
}

// move binds the lock key to a lease of req seconds. It runs in the lease's
// turn.
func (le *lease) move(ctx context.Context, ttl time.Duration, req int64) error {
	l := le.l
	for attempt := 0; ; attempt++ {
		g, err := l.pool.get(ctx, ttl, req)
		if err != nil {
			return errs.OpErrorCtx(ctx, "refresh", le.Key(), err)
		}
		resp, err := l.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(le.lk), "=", int64(le.Token()))).
			Then(clientv3.OpPut(le.lk, lockValue(g.ttl, le.fp), clientv3.WithLease(g.id))).
			Commit()
		switch {
		case err != nil && errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0:
			continue // the new lease died in the pool: refused whole
		case err != nil:
			// The key may now be bound to g: keep it with the holding
			// until a later outcome is certain.
			le.mu.Lock()
			le.strays = append(le.strays, g)
			le.mu.Unlock()
			return errs.OpErrorCtx(ctx, "refresh", le.Key(), err)
		case !resp.Succeeded:
			l.pool.put(g)
			le.Lose()
			return le.NotHeld("refresh")
		}
		// The key left the old lease (and any strays): they serve again.
		le.mu.Lock()
		free := append(le.strays, le.g)
		le.g, le.strays = g, nil
		le.mu.Unlock()
		for _, f := range free {
			l.pool.put(f)
		}
		le.doubt = false
		return nil
	}
}

// Release deletes the lock key in one transaction guarded by its creation
// revision, so it never deletes a newer holder's key; the etcd lease goes
// back to the Locker's pool. If the key is gone or belongs to another
// holding the error matches lock.ErrNotHeld.
func (le *lease) Release(ctx context.Context) error {
	return le.End(ctx, "release", func() error {
		resp, err := le.l.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(le.lk), "=", int64(le.Token()))).
			Then(clientv3.OpDelete(le.lk)).
			Commit()
		switch {
		case err != nil:
			le.doubt = true // the key may be gone: the next Refresh checks it
			return errs.OpErrorCtx(ctx, "release", le.Key(), err)
		case !resp.Succeeded:
			return le.NotHeld("release")
		}
		le.finish()
		return nil
	})
}

// finish records that the lease's own Release or Complete deleted its key:
// the loss watch stops, and the etcd lease and any strays go back to the
// pool. It runs in the lease's turn.
func (le *lease) finish() {
	le.mu.Lock()
	le.ended = true
	if le.unwatch != nil {
		le.unwatch()
	}
	free := append(le.strays, le.g)
	le.strays = nil
	le.mu.Unlock()
	for _, f := range free {
		le.l.pool.put(f)
	}
}

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
	if s := le.State(); s == driver.Released || s == driver.Lost {
		if !le.ended {
			close(le.lost)
		}
		return le.lost
	}
	if le.l.gate.IsClosed() {
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
	wch := le.l.watcher.Watch(ctx, le.lk, clientv3.WithRev(int64(le.Token())+1), clientv3.WithFilterPut())
	for resp := range wch {
		if resp.Err() != nil {
			return
		}
		for _, ev := range resp.Events {
			if ev.Type != mvccpb.DELETE {
				continue
			}
			// A Release or Complete sets ended in its turn, before the
			// turn passes on, so its own deletion is never taken for a
			// loss; if it ends the watch meanwhile, Serial returns.
			_ = le.Serial(ctx, func() error {
				le.mu.Lock()
				defer le.mu.Unlock()
				if !le.ended {
					le.Lose()
					close(le.lost)
				}
				return nil
			})
			return
		}
	}
}
