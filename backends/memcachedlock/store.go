package memcachedlock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// Claim makes one attempt on key for the idempotency helper. The key's lock
// and its completed record are one memcached item, so the look-up and the
// take are one atomic `add`: it fails while either a lock or a record is
// stored. Only then does Claim read the item: a record is returned (with a
// nil Lease), a lock gives a *lock.NotAcquiredError. An uncontended first
// claim is 3 requests (add, incr, gets), a replay 2 (add, get). Like
// TryAcquire, it returns as soon as ctx ends.
func (l *Locker) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	type claimed struct {
		le     *lease
		record []byte
	}
	c, err := run(ctx, l, func() (claimed, error) {
		le, record, _, err := l.claim(ctx, key, ttl, nil)
		return claimed{le, record}, err
	}, func(c claimed) {
		if c.le != nil {
			c.le.giveBack(ctx)
		}
	})
	switch {
	case err != nil:
		return nil, nil, err
	case c.le == nil:
		return nil, c.record, nil // never a typed nil inside the interface
	}
	return c.le, nil, nil
}

// claim is Claim, and with fp ClaimFingerprint, on the calling goroutine.
// A refused claim returns the holder's fingerprint as its third result.
func (l *Locker) claim(ctx context.Context, key string, ttl time.Duration, fp []byte) (*lease, []byte, []byte, error) {
	for range 2 {
		le, err := l.take(ctx, key, ttl, fp)
		if err == nil {
			return le, nil, nil, nil
		}
		var held *lock.NotAcquiredError
		if !errors.As(err, &held) {
			return nil, nil, nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, nil, nil, err
		}
		it, gerr := l.get(l.lockKey(key))
		switch {
		case errors.Is(gerr, memcache.ErrCacheMiss):
			continue // released (or expired) since the add: try again
		case gerr != nil:
			return nil, nil, nil, errs.OpError("claim: get", key, gerr)
		case len(it.Value) > 0 && it.Value[0] == kindRecord:
			return nil, append([]byte{}, it.Value[1:]...), nil, nil
		}
		return nil, nil, fingerprintOf(it.Value), err
	}
	return nil, nil, nil, &lock.NotAcquiredError{Key: key}
}

// Complete replaces the lock item of held by record, kept for retention
// (rounded up to whole seconds, plus one, like a TTL; at most [MaxTTL]),
// with one owner-checked gets + cas: if the lease no longer holds its key,
// it returns an error matching lock.ErrNotHeld and stores nothing. A record
// that does not fit in one item gives [ErrRecordTooLarge] and leaves the
// lease holding. held must come from Claim or TryAcquire on a Locker of
// this package.
func (l *Locker) Complete(ctx context.Context, held lock.Lease, record []byte, retention time.Duration) error {
	le, err := driver.Completing[*lease](ctx, &l.gate, held, retention)
	if err != nil {
		return err
	}
	exp, _, err := expiry(retention)
	if err != nil {
		return err
	}
	max := l.maxItemSize - itemOverhead - 1
	if len(record) > max {
		return errs.RecordTooLarge(le.Key(), len(record), max)
	}
	value := make([]byte, 1+len(record))
	value[0] = kindRecord
	copy(value[1:], record)
	return le.call(ctx, func() error {
		return le.End(ctx, "complete", func() error {
			err := le.swap(ctx, "complete", func(it *memcache.Item) {
				it.Value = value
				it.Expiration = exp
			})
			if isTooLarge(err) {
				return fmt.Errorf("%w: the server refused it: %w", errs.RecordTooLarge(le.Key(), len(record), max), err)
			}
			return err
		})
	})
}

// isTooLarge reports whether memcached refused a value for its size.
func isTooLarge(err error) bool {
	return err != nil && !errors.Is(err, lock.ErrNotHeld) && strings.Contains(strings.ToLower(err.Error()), "too large")
}
