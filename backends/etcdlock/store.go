package etcdlock

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Claim makes one attempt on key for the idempotency helper: in one etcd
// transaction it takes the lock key exactly as TryAcquire does, provided
// neither a holder's lock key nor a completed record exists; otherwise it
// reads both. A stored record is returned with a nil Lease; a holder gives a
// *lock.NotAcquiredError as TryAcquire does.
func (l *Locker) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	if err := l.gate.Check(ctx, "claim", key, ttl); err != nil {
		return nil, nil, err
	}
	le, rec, _, err := l.take(ctx, key, ttl, true, nil)
	return driver.LeaseOf(le), rec, err
}

// Complete stores record under the lease's key and ends the lease, in one
// etcd transaction guarded by the lock key's creation revision: if the lease
// no longer holds its key, nothing is stored and the error matches
// lock.ErrNotHeld. The record key is bound to a retention lease shared with
// the other records completed in the same bucket of time (see
// [WithRetentionBucket]), so the record expires, server-side, between
// retention and retention plus the bucket from now.
//
// Records larger than the Locker's limit (see [WithMaxRecordSize]) are
// refused with [lock.ErrRecordTooLarge] and the lease is left as it was. A
// Complete retried after an error whose outcome was unknown reports success
// if the first attempt stored the record. lease must come from this Locker
// (otherwise the error matches lock.ErrInvalidArgument).
func (l *Locker) Complete(ctx context.Context, ls lock.Lease, record []byte, retention time.Duration) error {
	le, err := driver.Completing[*lease](ctx, &l.gate, ls, retention)
	if err != nil {
		return err
	}
	if retention > maxLeaseTTL-24*time.Hour {
		return &lock.TTLError{TTL: retention, Reason: "retention longer than etcd's maximum lease TTL"}
	}
	if len(record) > l.cfg.maxRecord {
		return errs.RecordTooLarge(le.Key(), len(record), l.cfg.maxRecord)
	}
	rk := l.recordKey(le.Key())
	value := encodeRecord(le.Token(), record)
	return le.End(ctx, "complete", func() error {
		for attempt := 0; ; attempt++ {
			rg, err := l.ret.get(ctx, l.leases, retention, l.bucket(retention))
			if err != nil {
				return errs.OpErrorCtx(ctx, "complete", le.Key(), err)
			}
			resp, err := l.kv.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(le.lk), "=", int64(le.Token()))).
				Then(clientv3.OpDelete(le.lk), clientv3.OpPut(rk, string(value), clientv3.WithLease(rg.id))).
				Else(clientv3.OpGet(rk)).
				Commit()
			switch {
			case err != nil && errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0:
				l.ret.drop(rg) // refused whole; grant a fresh retention lease
				continue
			case err != nil:
				le.doubt = true // the key may be gone: the next Refresh checks it
				return errs.OpErrorCtx(ctx, "complete", le.Key(), err)
			case !resp.Succeeded:
				if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
					if tok, _, err := decodeRecord(kvs[0].Value); err == nil && tok == le.Token() {
						// An earlier attempt whose answer was lost stored it.
						le.finish()
						return nil
					}
				}
				return le.NotHeld("complete")
			}
			le.finish()
			return nil
		}
	})
}

// bucket returns how long a retention lease for retention accepts records.
func (l *Locker) bucket(retention time.Duration) time.Duration {
	if l.cfg.bucket > 0 {
		return l.cfg.bucket
	}
	return min(max(retention/16, time.Second), time.Hour)
}

// Records are stored as a format byte, the completing lease's fencing token
// (8 bytes, big-endian) and the caller's bytes.
const recordFormat = 1

func encodeRecord(token uint64, record []byte) []byte {
	b := make([]byte, 9, 9+len(record))
	b[0] = recordFormat
	binary.BigEndian.PutUint64(b[1:], token)
	return append(b, record...)
}

// errMalformedRecord is returned by Claim for a record key whose value this
// package did not write.
var errMalformedRecord = errors.New("malformed record (written by something other than etcdlock?)")

func decodeRecord(v []byte) (token uint64, record []byte, err error) {
	if len(v) < 9 || v[0] != recordFormat {
		return 0, nil, errMalformedRecord
	}
	return binary.BigEndian.Uint64(v[1:9]), v[9:], nil
}

// retention hands out shared retention leases: one per lease TTL, used by
// every record completed while it still lives at least the record's
// retention. Retention leases are never revoked by the Locker, Close
// included: they keep the records.
type retention struct {
	mu  sync.Mutex
	cur map[int64]grant // by requested TTL
}

func (r *retention) get(ctx context.Context, leases clientv3.Lease, retention, bucket time.Duration) (grant, error) {
	req := ceilSeconds(retention + bucket)
	now := time.Now()
	r.mu.Lock()
	g, ok := r.cur[req]
	if ok && g.expiry().Sub(now) >= retention {
		r.mu.Unlock()
		return g, nil
	}
	// Forget leases that expired: the map stays as small as the set of
	// retentions in use.
	for k, g := range r.cur {
		if !g.expiry().After(now) {
			delete(r.cur, k)
		}
	}
	r.mu.Unlock()
	sent := time.Now()
	resp, err := leases.Grant(ctx, req)
	if err != nil {
		return grant{}, err
	}
	g = grant{id: resp.ID, req: req, ttl: resp.TTL, base: sent}
	r.mu.Lock()
	if old, ok := r.cur[req]; !ok || old.expiry().Before(g.expiry()) {
		r.cur[req] = g
	}
	r.mu.Unlock()
	return g, nil
}

// drop forgets a retention lease etcd no longer knows.
func (r *retention) drop(g grant) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur[g.req].id == g.id {
		delete(r.cur, g.req)
	}
}
