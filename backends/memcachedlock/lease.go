package memcachedlock

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// lease is one holding of one key. Key, Token, Deadline (the take or latest
// refresh's send time plus the TTL rounded up to whole seconds), its state
// and its turn come from driver.Lease: Refresh, Release and Complete run one
// at a time (each is a gets and a cas, and two at once would read the same
// CAS id, so that one of them found the other's write and took it for
// another owner's).
type lease struct {
	driver.Lease
	l     *Locker
	item  string // the lock item's memcached key
	value []byte // the lock item's value while this lease holds it
}

// Refresh extends the lease to ttl from now with an owner-checked gets + cas.
func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := le.l.gate.CheckContext(ctx, "refresh"); err != nil {
		return err
	}
	exp, granted, err := expiry(ttl)
	if err != nil {
		return err
	}
	return le.call(ctx, func() error {
		return le.Serial(ctx, func() error {
			var sent time.Time
			err := le.swap(ctx, "refresh", func(it *memcache.Item) {
				it.Expiration = exp
				sent = time.Now()
			})
			if err == nil {
				le.Extend(sent, granted)
			}
			return err
		})
	})
}

// call runs op on a goroutine of the Locker's, returning when ctx ends (see
// run).
func (le *lease) call(ctx context.Context, op func() error) error {
	_, err := run(ctx, le.l, func() (struct{}, error) { return struct{}{}, op() }, nil)
	return err
}

// Release deletes the lock item if this lease still holds it: a gets, then
// a cas with an expiry in the past, so a newer holder's item is never
// touched.
func (le *lease) Release(ctx context.Context) error {
	if err := le.l.gate.CheckContext(ctx, "release"); err != nil {
		return err
	}
	return le.call(ctx, func() error { return le.drop(ctx) })
}

// drop deletes the lock item if this lease still holds it, in the lease's
// turn.
func (le *lease) drop(ctx context.Context) error {
	return le.End(ctx, "release", func() error {
		return le.swap(ctx, "release", func(it *memcache.Item) {
			it.Expiration = -1 // stored as expired at once: compare-and-delete
		})
	})
}

// giveBack releases a lease that a failed take may hold, owner-checked and
// with a context of its own; if that fails too, the item expires.
func (le *lease) giveBack(ctx context.Context) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*le.l.timeout())
	_ = le.drop(rctx)
	cancel()
}

// swap reads the lock item, checks that it still carries this lease's owner
// id, lets change edit it and writes it back with cas. It returns an error
// matching lock.ErrNotHeld when the lease does not hold its key. It runs in
// the lease's turn.
//
// Every step asks the server, so after a call whose outcome was unknown
// (its cas sent, the reply lost) the next one finds out what happened: the
// item is gone (a release went through), or carries another owner id, or
// is still this lease's.
func (le *lease) swap(ctx context.Context, op string, change func(*memcache.Item)) error {
	l := le.l
	if err := le.Check(op); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		it, err := l.get(le.item)
		switch {
		case errors.Is(err, memcache.ErrCacheMiss):
			return le.lost(op, "its lock expired, was released or was evicted")
		case err != nil:
			return le.OpError(op+": gets", err)
		case !bytes.Equal(it.Value, le.value):
			return le.lost(op, "another lease holds the key")
		case it.CasID == 0:
			return ErrNoCAS
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		change(it)
		err = l.client.CompareAndSwap(it)
		switch {
		case errors.Is(err, memcache.ErrCASConflict):
			// Changed since the gets: by another owner after expiry, or,
			// since only this lease writes an item that carries its owner
			// id, by an earlier write of this lease's that reached the
			// server late. The next gets tells which.
			if attempt < 2 {
				continue
			}
			return le.OpError(op+": cas", err)
		case errors.Is(err, memcache.ErrNotStored), errors.Is(err, memcache.ErrCacheMiss):
			// Gone since the gets: by expiry, and perhaps another take.
			return le.lost(op, "its lock changed hands during the "+op)
		case err != nil:
			return le.OpError(op+": cas", err)
		}
		return nil
	}
}

// lost marks the lease lost and returns the error saying why.
func (le *lease) lost(op, why string) error {
	le.Lose()
	return le.NotHeldWhy(op, why)
}

// Interface checks.
var (
	_ lock.Lease     = (*lease)(nil)
	_ lock.Deadliner = (*lease)(nil)
)
