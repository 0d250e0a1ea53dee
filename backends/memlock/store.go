package memlock

import (
	"context"
	"time"

	"github.com/idemlock/lock"
)

// Claim makes one attempt on key for the idempotency helper (it makes
// *Locker an idempotency.Store): if a completed record is kept under key it
// returns a copy of it and a nil Lease; otherwise it takes key for ttl
// exactly as TryAcquire does. Both happen under the one mutex, so a record
// stored by Complete is never missed by a Claim that then takes the key.
//
// Records live until their retention ends on the monotonic clock and are
// reclaimed from a deadline heap as later calls pass by, like expired leases:
// memory stays proportional to the keys held plus the records retained.
func (l *Locker) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	if err := l.gate.Check(ctx, "claim", key, ttl); err != nil {
		return nil, nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	l.reclaim(now)
	if rec := l.records[key]; rec != nil {
		return nil, append([]byte(nil), rec.record...), nil
	}
	le, err := l.take(key, ttl, now)
	if err != nil {
		return nil, nil, err
	}
	return le, nil, nil
}

// Complete stores record under the key of lease for retention and ends the
// lease, in one step under the mutex, provided the lease still holds its
// key; otherwise it returns lock.ErrNotHeld and stores nothing. Subscribers
// of the key (see [Locker.Subscribe]) are woken, as by a release, so that
// waiting duplicates find the record at once.
func (l *Locker) Complete(ctx context.Context, ls lock.Lease, record []byte, retention time.Duration) error {
	if err := l.gate.CheckComplete(ctx, retention); err != nil {
		return err
	}
	le, ok := ls.(*lease) // memlock's lease is its table's entry: no driver.Lease
	if !ok || le == nil || le.l != l {
		return errs.InvalidArgument("Complete with a lease this Locker did not hand out (%T)", ls)
	}
	rec := &lease{l: l, key: le.key, record: append([]byte(nil), record...), index: -1}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	if !l.owns(le, now) {
		return lock.ErrNotHeld
	}
	l.heap.remove(le)
	delete(l.held, le.key)
	le.ended = true
	if old := l.records[le.key]; old != nil {
		// Only reachable if TryAcquire took a key that has a record (keys
		// used with Claim are not meant for TryAcquire): the newer wins.
		l.rheap.remove(old)
	}
	rec.deadline = later(now, retention)
	l.records[le.key] = rec
	l.rheap.push(rec)
	for _, w := range l.waiters[le.key] {
		w.wake.Notify() // every duplicate can replay the record now
	}
	return nil
}

// Records returns how many idempotency records are retained right now
// (records past their retention are reclaimed first). It is meant for tests
// and metrics.
func (l *Locker) Records() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reclaim(l.clock())
	return len(l.records)
}
