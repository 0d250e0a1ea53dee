package redislock

import (
	"context"
	"fmt"
	"time"

	"github.com/idemlock/lock"
)

// Claim makes one attempt on key for the idempotency helper (it makes
// *Locker an idempotency.Store), in one script and one round trip: if a
// completed record is stored under key it returns it and a nil Lease;
// otherwise it takes key for ttl exactly as [Locker.TryAcquire] does. The
// record lookup and the take are one atomic step on the server.
func (l *Locker) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	if err := lock.CheckArgs(ctx, key, ttl); err != nil {
		return nil, nil, err
	}
	if l.err != nil {
		return nil, nil, l.err
	}
	le, rec, _, err := l.take(ctx, claimScript, key, ttl, true, nil)
	if err != nil {
		return nil, nil, err
	}
	if le == nil {
		return nil, rec, nil
	}
	return le, nil, nil
}

// Complete stores record under the key of lease for retention (PX, counted
// by the server) and ends the lease, in one script and one round trip,
// provided the lease still holds its lock; otherwise it returns an error
// matching lock.ErrNotHeld and stores nothing. Waiters of the key are woken
// as by a release, so that they find the record at once. lease must come
// from this Locker. Records longer than the Locker's limit (see
// [WithMaxRecordSize]) get an error matching [ErrRecordTooLarge].
func (l *Locker) Complete(ctx context.Context, ls lock.Lease, record []byte, retention time.Duration) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	if l.err != nil {
		return l.err
	}
	if retention <= 0 {
		return &lock.TTLError{TTL: retention, Reason: "retention must be positive"}
	}
	le, ok := ls.(*lease)
	if !ok || le == nil || le.l != l {
		return fmt.Errorf("%w: redislock: Complete with a lease this Locker did not hand out (%T)", lock.ErrInvalidArgument, ls)
	}
	if len(record) > l.maxRecord {
		return fmt.Errorf("%w: %d bytes, over the limit of %d", ErrRecordTooLarge, len(record), l.maxRecord)
	}
	if record == nil {
		record = []byte{}
	}
	return le.end(ctx, "complete", l.complete, []any{nil, nil, 3, le.lockArg, recordKey(le.lock), le.marker(), le.valueArg, record, millis(retention)})
}
