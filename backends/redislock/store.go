package redislock

import (
	"context"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// Claim makes one attempt on key for the idempotency helper (it makes
// *Locker an idempotency.Store), in one script and one round trip: if a
// completed record is stored under key it returns it and a nil Lease;
// otherwise it takes key for ttl exactly as [Locker.TryAcquire] does. The
// record lookup and the take are one atomic step on the server.
func (l *Locker) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	if err := l.gate.Check(ctx, "claim", key, ttl); err != nil {
		return nil, nil, err
	}
	le, rec, _, err := l.take(ctx, claimScript, key, ttl, true, nil)
	return driver.LeaseOf(le), rec, err
}

// Complete stores record under the key of lease for retention (PX, counted
// by the server) and ends the lease, in one script and one round trip,
// provided the lease still holds its lock; otherwise it returns an error
// matching lock.ErrNotHeld and stores nothing. Waiters of the key are woken
// as by a release, so that they find the record at once. lease must come
// from this Locker. Records longer than the Locker's limit (see
// [WithMaxRecordSize]) get an error matching [lock.ErrRecordTooLarge].
func (l *Locker) Complete(ctx context.Context, ls lock.Lease, record []byte, retention time.Duration) error {
	le, err := driver.Completing[*lease](ctx, &l.gate, ls, retention)
	if err != nil {
		return err
	}
	if len(record) > l.maxRecord {
		return errs.RecordTooLarge(le.Key(), len(record), l.maxRecord)
	}
	if record == nil {
		record = []byte{}
	}
	return le.end(ctx, "complete", l.complete, []any{nil, nil, 3, le.lockArg, recordKey(le.lock), le.marker(), le.valueArg, record, millis(retention)})
}
