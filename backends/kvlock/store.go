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
	if err := l.gate.Check(ctx, "claim", key, ttl); err != nil {
		return nil, nil, err
	}
	le, rec, _, err := l.take(ctx, key, ttl, nil)
	if err != nil || rec != nil {
		return nil, rec, err
	}
	return le, nil, nil
}

// Complete stores record under the key of the lease for retention and ends
// the lease, in one CompareAndSwap, provided the lease still holds its key;
// otherwise it returns lock.ErrNotHeld and stores nothing.
func (l *Locker) Complete(ctx context.Context, ls lock.Lease, record []byte, retention time.Duration) error {
	if err := l.gate.CheckComplete(ctx, retention); err != nil {
		return err
	}
	le, err := driver.Own[*lease](&l.gate, "Complete", ls)
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
