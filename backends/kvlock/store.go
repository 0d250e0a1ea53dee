package kvlock

import (
	"context"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// Claim makes one attempt on key for the idempotency helper: the record if
// one is stored, else a lease as TryAcquire takes it.
func (l *Locker) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	le, rec, _, err := l.checkedTake(ctx, "claim", key, ttl)
	return driver.LeaseOf(le), rec, err
}

// Complete stores record under the key of the lease for retention and ends
// the lease, in one CompareAndSwap, provided the lease still holds its key;
// otherwise it returns lock.ErrNotHeld and stores nothing.
func (l *Locker) Complete(ctx context.Context, ls lock.Lease, record []byte, retention time.Duration) error {
	le, err := driver.Completing[*lease](ctx, &l.gate, ls, retention)
	if err != nil {
		return err
	}
	value := make([]byte, 1+len(record))
	value[0] = recordTag
	copy(value[1:], record)
	return le.End(ctx, "complete", func() error {
		swapped, err := l.kv.CompareAndSwap(ctx, le.lockKey, le.value, value, retention)
		if err != nil {
			return opError("complete", le.Key(), err)
		}
		if !swapped {
			return le.NotHeld("complete")
		}
		return nil
	})
}
