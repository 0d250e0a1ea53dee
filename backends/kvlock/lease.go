package kvlock

import (
	"context"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// lease is one holding: the lock key holds value while it lasts. Key,
// Token, Deadline (the take or latest successful refresh's send time plus
// its TTL: the server's expiry is no earlier), its state and the
// serialisation of Release and Complete come from driver.Lease.
type lease struct {
	driver.Lease
	lockKey string  // the KV key
	value   []byte  // what it holds while this lease holds it
	l       *Locker // the Locker that took it
}

func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	if err := le.Check("refresh"); err != nil {
		return err
	}
	sent := time.Now()
	ok, err := le.l.kv.CompareAndExpire(ctx, le.lockKey, le.value, ttl)
	if err != nil {
		return opError("refresh", le.Key(), err)
	}
	if !ok {
		le.Lose()
		return le.NotHeld("refresh")
	}
	le.Extend(sent, ttl)
	return nil
}

func (le *lease) Release(ctx context.Context) error {
	return le.End(ctx, "release", func() error {
		ok, err := le.l.kv.CompareAndDelete(ctx, le.lockKey, le.value)
		if err != nil {
			return opError("release", le.Key(), err)
		}
		if !ok {
			return le.NotHeld("release")
		}
		return nil
	})
}
