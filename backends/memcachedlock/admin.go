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

var _ driver.FullBackend = (*Locker)(nil)

// Ping asks every server of the client for its version (gomemcache's
// Ping) and returns nil if all answered; like every call it returns as
// soon as ctx ends. After [Locker.Close] it returns an error matching
// [lock.ErrClosed].
func (l *Locker) Ping(ctx context.Context) error {
	if err := l.gate.CheckContext(ctx, "ping"); err != nil {
		return err
	}
	_, err := run(ctx, l, func() (struct{}, error) { return struct{}{}, l.client.Ping() }, nil)
	if err != nil {
		return errs.OpError("ping", "", err)
	}
	return nil
}

// TTLLimits reports memcached's limits: whole seconds, at most [MaxTTL]
// (an expiry over 30 days would be read as an absolute time).
func (l *Locker) TTLLimits() lock.TTLLimits {
	return lock.TTLLimits{Max: MaxTTL, Step: time.Second}
}

// ClaimFingerprint is [Locker.Claim] that also keeps fp (at most 64 bytes)
// in the lock item's value, stored by the same `add` as the lease; a claim
// refused because another claim holds the key gets that claim's fp as
// holder (read by the `get` that looks for a record). It makes *Locker an
// idempotency.FingerprintClaimer.
func (l *Locker) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (lock.Lease, []byte, []byte, error) {
	if err := l.gate.CheckClaim(ctx, key, ttl, fp); err != nil {
		return nil, nil, nil, err
	}
	type claimed struct {
		le             *lease
		record, holder []byte
	}
	fp = bytes.Clone(fp)
	c, err := run(ctx, l, func() (claimed, error) {
		le, record, holder, err := l.claim(ctx, key, ttl, fp)
		return claimed{le, record, holder}, err
	}, func(c claimed) {
		if c.le != nil {
			c.le.giveBack(ctx)
		}
	})
	switch {
	case err != nil:
		return nil, nil, c.holder, err
	case c.le == nil:
		return nil, c.record, nil, nil
	}
	return c.le, nil, nil, nil
}

// Inspect reads the item of key (one gets). It makes *Locker a lock.Admin:
// key is the caller's key, hashed here as the leases hash it. memcached
// tells neither an item's remaining TTL nor, in the item, the holder's
// token, so Token, Remaining and RecordRemaining are zero.
func (l *Locker) Inspect(ctx context.Context, key string) (lock.KeyInfo, error) {
	if err := l.gate.CheckKey(ctx, "inspect", key); err != nil {
		return lock.KeyInfo{}, err
	}
	return run(ctx, l, func() (lock.KeyInfo, error) {
		info := lock.KeyInfo{Key: key}
		it, err := l.get(l.lockKey(key))
		switch {
		case errors.Is(err, memcache.ErrCacheMiss):
			return info, nil
		case err != nil:
			return info, errs.OpError("inspect: gets", key, err)
		case len(it.Value) > 0 && it.Value[0] == kindLock:
			info.Held = true
		case len(it.Value) > 0 && it.Value[0] == kindRecord:
			info.Record, info.RecordSize = true, len(it.Value)-1
		}
		return info, nil
	}, nil)
}

// ForceRelease deletes the lock item of key, whoever holds it, with a gets
// and a cas that expires it at once (so it deletes the holding it read and
// no later one): the holder's next Refresh, Release or Complete reports
// lock.ErrNotHeld. The token counters are other items, so tokens keep
// increasing. It returns an error matching lock.ErrNotHeld if no lease
// held key.
func (l *Locker) ForceRelease(ctx context.Context, key string) error {
	return l.drop(ctx, "force release", key, kindLock)
}

// DeleteRecord deletes the idempotency record of key (a gets and a cas), so
// that the next Claim takes the key. It returns an error matching
// lock.ErrNotHeld if no record was stored.
func (l *Locker) DeleteRecord(ctx context.Context, key string) error {
	return l.drop(ctx, "delete record", key, kindRecord)
}

// drop deletes the item of key if it is of kind, compared by its CAS id.
func (l *Locker) drop(ctx context.Context, op, key string, kind byte) error {
	if err := l.gate.CheckKey(ctx, op, key); err != nil {
		return err
	}
	item := l.lockKey(key)
	_, err := run(ctx, l, func() (struct{}, error) {
		for range 3 {
			it, err := l.get(item)
			switch {
			case errors.Is(err, memcache.ErrCacheMiss):
				return struct{}{}, errs.NotHeld(op, key)
			case err != nil:
				return struct{}{}, errs.OpError(op+": gets", key, err)
			case len(it.Value) == 0 || it.Value[0] != kind:
				return struct{}{}, errs.NotHeld(op, key)
			case it.CasID == 0:
				return struct{}{}, ErrNoCAS
			}
			if err := ctx.Err(); err != nil {
				return struct{}{}, err
			}
			it.Expiration = -1 // stored as expired at once: compare-and-delete
			err = l.client.CompareAndSwap(it)
			switch {
			case err == nil:
				return struct{}{}, nil
			case errors.Is(err, memcache.ErrCASConflict), errors.Is(err, memcache.ErrNotStored), errors.Is(err, memcache.ErrCacheMiss):
				continue // changed since the gets: look again
			default:
				return struct{}{}, errs.OpError(op+": cas", key, err)
			}
		}
		return struct{}{}, errs.OpError(op, key, errors.New("the item keeps changing"))
	}, nil)
	return err
}
