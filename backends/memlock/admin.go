package memlock

import (
	"bytes"
	"context"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

var (
	_ driver.FullBackend = (*Locker)(nil)
	_ lock.LossNotifier  = (*lease)(nil)
)

// ErrClosed is returned by [Locker.Ping] after [Locker.Close].
//
// Deprecated: it is [lock.ErrClosed]; use that.
var ErrClosed = lock.ErrClosed

// Ping reports whether l is usable: nil until [Locker.Close], then
// [ErrClosed]. It makes *Locker a lock.Pinger, as every backend is.
func (l *Locker) Ping(ctx context.Context) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	if l.gate.IsClosed() {
		return errs.Closed("ping", "")
	}
	return nil
}

// TTLLimits reports that memlock honours every positive TTL exactly (on
// the monotonic clock, to the nanosecond): all limits are zero.
func (l *Locker) TTLLimits() lock.TTLLimits { return lock.TTLLimits{} }

// ClaimFingerprint is [Locker.Claim] that also keeps fp (at most
// 64 bytes, copied) with the lease it takes; a Claim refused
// because another claim holds the key returns that claim's fp as holder.
// It makes *Locker an idempotency.FingerprintClaimer.
func (l *Locker) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (lock.Lease, []byte, []byte, error) {
	if err := l.gate.CheckClaim(ctx, key, ttl, fp); err != nil {
		return nil, nil, nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	l.reclaim(now)
	if rec := l.records[key]; rec != nil {
		return nil, append([]byte(nil), rec.record...), nil, nil
	}
	if cur := l.held[key]; cur != nil {
		return nil, nil, bytes.Clone(cur.fp), &lock.NotAcquiredError{Key: key, Remaining: cur.deadline - now}
	}
	le, err := l.take(key, ttl, now)
	if err != nil {
		return nil, nil, nil, err
	}
	le.fp = bytes.Clone(fp)
	return le, nil, nil, nil
}

// Inspect reports the holding and the record of key. It makes *Locker a
// lock.Admin.
func (l *Locker) Inspect(ctx context.Context, key string) (lock.KeyInfo, error) {
	if err := l.gate.CheckKey(ctx, "inspect", key); err != nil {
		return lock.KeyInfo{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	l.reclaim(now)
	info := lock.KeyInfo{Key: key}
	if le := l.held[key]; le != nil {
		info.Held, info.Token, info.Remaining = true, le.token, le.deadline-now
	}
	if rec := l.records[key]; rec != nil {
		info.Record, info.RecordSize, info.RecordRemaining = true, len(rec.record), rec.deadline-now
	}
	return info, nil
}

// ForceRelease ends the holding of key, whoever holds it: the holder's
// next call reports lock.ErrNotHeld, and a waiter is woken as by a
// release. It returns lock.ErrNotHeld if nothing held key.
func (l *Locker) ForceRelease(ctx context.Context, key string) error {
	if err := l.gate.CheckKey(ctx, "force release", key); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reclaim(l.clock())
	le := l.held[key]
	if le == nil {
		return lock.ErrNotHeld
	}
	l.heap.remove(le)
	delete(l.held, key)
	le.lose()
	l.wakeFirst(key)
	return nil
}

// DeleteRecord deletes the idempotency record of key, so that the next
// Claim takes the key. It returns lock.ErrNotHeld if no record was kept.
func (l *Locker) DeleteRecord(ctx context.Context, key string) error {
	if err := l.gate.CheckKey(ctx, "delete record", key); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reclaim(l.clock())
	rec := l.records[key]
	if rec == nil {
		return lock.ErrNotHeld
	}
	l.rheap.remove(rec)
	delete(l.records, key)
	return nil
}
