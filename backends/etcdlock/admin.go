package etcdlock

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var _ driver.FullBackend = (*Locker)(nil)

// serverMinLeaseTTL is the shortest lease etcd grants with its default
// election timeout (1 s): about 1.5 election timeouts, rounded up to whole
// seconds. It grants shorter requests this long.
const serverMinLeaseTTL = 2 * time.Second

// lockValue is the value of a lock key: the granted lease TTL in decimal
// seconds, and with a fingerprint, '/' and its bytes.
func lockValue(ttl int64, fp []byte) string {
	v := strconv.FormatInt(ttl, 10)
	if fp == nil {
		return v
	}
	return v + "/" + string(fp)
}

// parseLockValue splits a lock key's value into its TTL (0 when it is not
// one) and fingerprint (nil without one).
func parseLockValue(v []byte) (int64, []byte) {
	num, fp, ok := bytes.Cut(v, []byte("/"))
	s, err := strconv.ParseInt(string(num), 10, 64)
	if err != nil {
		s = 0
	}
	if !ok {
		return s, nil
	}
	return s, bytes.Clone(fp)
}

// Ping makes one linearizable read (a count of one key, through the
// leader's read index, so it needs a quorum) with ctx, and returns nil if
// it was answered. After [Locker.Close] it returns an error matching
// [lock.ErrClosed].
func (l *Locker) Ping(ctx context.Context) error {
	if err := l.gate.CheckContext(ctx, "ping"); err != nil {
		return err
	}
	if _, err := l.kv.Get(ctx, l.cfg.prefix, clientv3.WithCountOnly()); err != nil {
		return errs.OpErrorCtx(ctx, "ping", l.cfg.prefix, err)
	}
	return nil
}

// TTLLimits reports etcd's limits: whole seconds; at least the server's
// minimum lease (2 s with the default election timeout) less the Locker's
// TTL slack, since a lock may last the slack longer than asked; at most
// etcd's maximum lease TTL less the slack.
func (l *Locker) TTLLimits() lock.TTLLimits {
	return lock.TTLLimits{
		Min:  max(serverMinLeaseTTL-l.cfg.slack, time.Second),
		Max:  maxLeaseTTL - l.cfg.slack,
		Step: time.Second,
	}
}

// ClaimFingerprint is [Locker.Claim] that also keeps fp (at most 64 bytes)
// in the lock key's value, put by the same transaction as the lease; a
// claim refused because another claim holds the key gets that claim's fp
// as holder. It makes *Locker an idempotency.FingerprintClaimer.
func (l *Locker) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (lock.Lease, []byte, []byte, error) {
	if err := l.gate.CheckClaim(ctx, key, ttl, fp); err != nil {
		return nil, nil, nil, err
	}
	le, rec, holder, err := l.take(ctx, key, ttl, true, bytes.Clone(fp))
	return driver.LeaseOf(le), rec, holder, err
}

// Inspect reads the lock key and the record key of key in one transaction,
// and the remaining TTLs of their etcd leases. It makes *Locker a
// lock.Admin: key is the caller's key.
func (l *Locker) Inspect(ctx context.Context, key string) (lock.KeyInfo, error) {
	if err := l.gate.CheckKey(ctx, "inspect", key); err != nil {
		return lock.KeyInfo{}, err
	}
	resp, err := l.kv.Txn(ctx).Then(clientv3.OpGet(l.lockKey(key)), clientv3.OpGet(l.recordKey(key))).Commit()
	if err != nil {
		return lock.KeyInfo{}, errs.OpErrorCtx(ctx, "inspect", key, err)
	}
	info := lock.KeyInfo{Key: key}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		info.Held, info.Token = true, uint64(kvs[0].CreateRevision)
		if info.Remaining, err = l.leaseRemaining(ctx, kvs[0].Lease); err != nil {
			return info, errs.OpErrorCtx(ctx, "inspect", key, err)
		}
	}
	if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
		_, rec, err := decodeRecord(kvs[0].Value)
		if err != nil {
			return info, errs.OpError("inspect", key, err)
		}
		info.Record, info.RecordSize = true, len(rec)
		if info.RecordRemaining, err = l.leaseRemaining(ctx, kvs[0].Lease); err != nil {
			return info, errs.OpErrorCtx(ctx, "inspect", key, err)
		}
	}
	return info, nil
}

// leaseRemaining returns the remaining TTL of an etcd lease (zero when
// there is none or it just ended).
func (l *Locker) leaseRemaining(ctx context.Context, id int64) (time.Duration, error) {
	if id == 0 {
		return 0, nil
	}
	ttl, err := l.leases.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil || ttl.TTL <= 0 {
		return 0, err
	}
	return time.Duration(ttl.TTL) * time.Second, nil
}

// ForceRelease deletes the lock key of key, whoever holds it, in one
// transaction guarded by the key's creation revision (so it deletes the
// holding it read and no later one), and then revokes the holder's etcd
// lease: the holder's next Refresh, Release or Complete reports
// lock.ErrNotHeld (renewing a lease needs it to exist; see Refresh), and
// waiters wake on the deletion. Revisions, and so tokens, keep increasing.
// It returns an error matching lock.ErrNotHeld if no lease held key; an
// error after the deletion says the revocation failed (the holder then
// learns of the loss only when its lease expires or it moves the key).
func (l *Locker) ForceRelease(ctx context.Context, key string) error {
	if err := l.gate.CheckKey(ctx, "force release", key); err != nil {
		return err
	}
	lk := l.lockKey(key)
	for {
		got, err := l.kv.Get(ctx, lk)
		if err != nil {
			return errs.OpErrorCtx(ctx, "force release", key, err)
		}
		if len(got.Kvs) == 0 {
			return errs.NotHeld("force release", key)
		}
		kv := got.Kvs[0]
		resp, err := l.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(lk), "=", kv.CreateRevision)).
			Then(clientv3.OpDelete(lk)).
			Commit()
		if err != nil {
			return errs.OpErrorCtx(ctx, "force release", key, err)
		}
		if !resp.Succeeded {
			continue // released or taken again in between: look again
		}
		if kv.Lease == 0 {
			return nil
		}
		// Nobody else uses the holding's lease while it is held, and its
		// holder returns it to the pool only after a successful release
		// or completion, which the deletion made impossible.
		if _, err := l.leases.Revoke(ctx, clientv3.LeaseID(kv.Lease)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return errs.OpErrorCtx(ctx, "force release (the key was deleted; revoking its lease failed)", key, err)
		}
		return nil
	}
}

// DeleteRecord deletes the idempotency record of key (one request), so that
// the next Claim takes the key. It returns an error matching
// lock.ErrNotHeld if no record was stored.
func (l *Locker) DeleteRecord(ctx context.Context, key string) error {
	if err := l.gate.CheckKey(ctx, "delete record", key); err != nil {
		return err
	}
	resp, err := l.kv.Delete(ctx, l.recordKey(key))
	if err != nil {
		return errs.OpErrorCtx(ctx, "delete record", key, err)
	}
	return errs.Found("delete record", key, resp.Deleted > 0, nil)
}
