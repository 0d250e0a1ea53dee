package consullock

import (
	"context"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// Claim makes one attempt on key for the idempotency helper (it makes
// *Locker an idempotency.Store): one transaction checks that no record
// exists under key and takes the lock, so a record stored by Complete is
// never missed by a Claim that then takes the key. If a record exists, a
// second request reads it and Claim returns it with a nil Lease (an empty
// record is returned as a non-nil empty slice). Otherwise Claim behaves as
// TryAcquire.
func (l *Locker) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	if err := l.gate.Check(ctx, "claim", key, ttl); err != nil {
		return nil, nil, err
	}
	le, rec, _, err := l.take(ctx, key, ttl, true, nil)
	if err != nil {
		return nil, nil, err
	}
	if le == nil {
		return nil, rec, nil
	}
	return le, nil, nil
}

// Complete stores record under the key of lease, which Claim on this Locker
// returned, and ends the lease, in one transaction: it checks that the
// lease's session holds the lock at the lease's index, deletes the lock and
// writes the record locked by the retention session (see the package doc).
// If the lease no longer holds, it returns an error matching
// lock.ErrNotHeld and stores nothing. Retention is rounded up to whole
// seconds and to the minimum TTL; above 24 h it is a [*lock.TTLError]. A
// record over the limit ([WithMaxRecordSize]) is an error matching
// [lock.ErrRecordTooLarge]. Like Release, it works on a lease held after
// [Locker.Close].
func (l *Locker) Complete(ctx context.Context, ls lock.Lease, record []byte, retention time.Duration) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	le, err := driver.Own[*lease](&l.gate, "Complete", ls)
	if err != nil {
		return err
	}
	rttl, width, err := l.retentionTTL(retention)
	if err != nil {
		return err
	}
	if len(record) > l.cfg.maxRecord {
		return errs.RecordTooLarge(le.Key(), len(record), l.cfg.maxRecord)
	}
	if record == nil {
		record = []byte{}
	}
	return le.End(ctx, "complete", func() error {
		if le.State() == driver.Lost {
			le.dropEntry(ctx)
			return le.NotHeldWhy("complete", "lost before completion")
		}
		s, err := le.holding(ctx, "complete")
		if err != nil {
			return err
		}
		le.mu.Lock()
		index := le.index
		le.mu.Unlock()
		recPath := l.recordPath(le.Key())
		for attempt := 0; ; attempt++ {
			rs, err := l.retention.session(ctx, rttl, width)
			if err != nil {
				return err
			}
			ok, resp, err := le.write(ctx, le.withEntry(api.TxnOps{
				{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: le.path, Session: s.id}},
				{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: le.path, Index: index}},
				{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: recPath}},
				{KV: &api.KVTxnOp{Verb: api.KVLock, Key: recPath, Session: rs.id, Value: record}},
			}))
			if err == nil && !ok {
				if f := failure(resp.Errors); f.op == 3 && f.invalidSession() && attempt < 2 {
					l.retention.forget(rttl, rs)
					continue // the retention session expired early or the agent restarted
				}
			}
			return le.ended(ok, resp, err, "complete", s)
		}
	})
}

// retentionTTL returns the retention rounded up to whole seconds and to
// the minimum TTL, and the width of its buckets: an eighth of it in whole
// seconds, at most 1 h (so 0, a session per record, under 8 s).
func (l *Locker) retentionTTL(retention time.Duration) (rttl, width time.Duration, err error) {
	if retention <= 0 {
		return 0, 0, &lock.TTLError{TTL: retention, Reason: "retention must be positive"}
	}
	if retention > MaxTTL {
		return 0, 0, &lock.TTLError{TTL: retention, Reason: "retention longer than Consul's 24h maximum session TTL"}
	}
	rttl = max(roundUp(retention, TTLStep), l.cfg.minTTL)
	width = min(rttl/8, time.Hour).Truncate(TTLStep)
	return rttl, width, nil
}

// readRecord reads the record at path; found is false if there is none.
func (l *Locker) readRecord(ctx context.Context, path string) (rec []byte, found bool, err error) {
	pair, _, err := l.client.KV().Get(path, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, false, apiError(err)
	}
	if pair == nil {
		return nil, false, nil
	}
	if pair.Value == nil {
		return []byte{}, true, nil
	}
	return pair.Value, true, nil
}
