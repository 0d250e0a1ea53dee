package kvlock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

var _ driver.FullBackend = (*Locker)(nil)

// Reader is an optional capability of a KV: reading a key. With it the
// Locker's lock.Admin methods work; without it they return an error
// matching errors.ErrUnsupported.
type Reader interface {
	// Get returns key's value and its remaining time to live (zero if the
	// store cannot tell); found is false if key is absent or expired.
	Get(ctx context.Context, key string) (value []byte, remaining time.Duration, found bool, err error)
}

// A KV may also implement lock.Pinger (one cheap request to its server),
// which [Locker.Ping] calls, and lock.TTLLimiter (its server's TTL
// limits), which [Locker.TTLLimits] reports.

// ownerLen is the length of a lease's value without a fingerprint: the tag
// and 16 random bytes.
const ownerLen = 17

// fingerprintOf returns the fingerprint a lease's value carries, or nil.
func fingerprintOf(v []byte) []byte {
	if len(v) <= ownerLen || v[0] != leaseTag || v[ownerLen] != '/' {
		return nil
	}
	return bytes.Clone(v[ownerLen+1:])
}

// Ping calls the KV's Ping if it implements lock.Pinger, and otherwise
// returns an error matching errors.ErrUnsupported.
func (l *Locker) Ping(ctx context.Context) error {
	if err := l.gate.CheckContext(ctx, "ping"); err != nil {
		return err
	}
	p, ok := l.kv.(lock.Pinger)
	if !ok {
		return fmt.Errorf("kvlock: the KV %T cannot be pinged: %w", l.kv, errors.ErrUnsupported)
	}
	if err := p.Ping(ctx); err != nil {
		return opError("ping", "", err)
	}
	return nil
}

// TTLLimits returns the KV's limits if it implements lock.TTLLimiter, and
// otherwise none.
func (l *Locker) TTLLimits() lock.TTLLimits {
	if tl, ok := l.kv.(lock.TTLLimiter); ok {
		return tl.TTLLimits()
	}
	return lock.TTLLimits{}
}

// ClaimFingerprint is [Locker.Claim] that also keeps fp (at most 64 bytes)
// in the lease's value, stored by the same Create; a claim refused because
// another claim holds the key gets that claim's fp as holder, from the
// value Create returned. It makes *Locker an idempotency.FingerprintClaimer.
func (l *Locker) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (lock.Lease, []byte, []byte, error) {
	if err := l.gate.CheckClaim(ctx, key, ttl, fp); err != nil {
		return nil, nil, nil, err
	}
	le, rec, holder, err := l.take(ctx, key, ttl, fp)
	return driver.LeaseOf(le), rec, holder, err
}

// read reads the lock key of key, or says that the KV cannot.
func (l *Locker) read(ctx context.Context, op, key string) (value []byte, remaining time.Duration, found bool, err error) {
	if err := l.gate.CheckKey(ctx, op, key); err != nil {
		return nil, 0, false, err
	}
	r, ok := l.kv.(Reader)
	if !ok {
		return nil, 0, false, errs.OpError(op, key, fmt.Errorf("the KV %T is not a kvlock.Reader: %w", l.kv, errors.ErrUnsupported))
	}
	value, remaining, found, err = r.Get(ctx, l.lockKey(key))
	if err != nil {
		return nil, 0, false, opError(op, key, err)
	}
	return value, remaining, found, nil
}

// Inspect reads the lock key of key (the KV must be a [Reader]). It makes
// *Locker a lock.Admin: key is the caller's key. The token is kept in the
// counter, not with the lease, so Token is zero.
func (l *Locker) Inspect(ctx context.Context, key string) (lock.KeyInfo, error) {
	v, remaining, found, err := l.read(ctx, "inspect", key)
	info := lock.KeyInfo{Key: key}
	switch {
	case err != nil || !found || len(v) == 0:
	case v[0] == leaseTag:
		info.Held, info.Remaining = true, remaining
	case v[0] == recordTag:
		info.Record, info.RecordSize, info.RecordRemaining = true, len(v)-1, remaining
	}
	return info, err
}

// ForceRelease deletes the lease of key, whoever holds it: a read and a
// CompareAndDelete of the value read (the KV must be a [Reader]). The
// holder's next call compares its value and reports lock.ErrNotHeld; the
// counter, and so the tokens, go on. It returns an error matching
// lock.ErrNotHeld if no lease held key.
func (l *Locker) ForceRelease(ctx context.Context, key string) error {
	return l.drop(ctx, "force release", key, leaseTag)
}

// DeleteRecord deletes the idempotency record of key (a read and a
// CompareAndDelete; the KV must be a [Reader]), so that the next Claim
// takes the key. It returns an error matching lock.ErrNotHeld if no record
// was stored.
func (l *Locker) DeleteRecord(ctx context.Context, key string) error {
	return l.drop(ctx, "delete record", key, recordTag)
}

func (l *Locker) drop(ctx context.Context, op, key string, tag byte) error {
	for range 3 {
		v, _, found, err := l.read(ctx, op, key)
		switch {
		case err != nil:
			return err
		case !found || len(v) == 0 || v[0] != tag:
			return errs.NotHeld(op, key)
		}
		deleted, err := l.kv.CompareAndDelete(ctx, l.lockKey(key), v)
		if err != nil {
			return opError(op, key, err)
		}
		if deleted {
			return nil
		}
		// Changed since the read: look again.
	}
	return errs.OpError(op, key, errors.New("the key keeps changing"))
}
