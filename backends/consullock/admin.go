package consullock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"github.com/idemlock/lock/idempotency"
)

var (
	_ driver.FullBackend             = (*Locker)(nil)
	_ idempotency.FingerprintClaimer = (*Locker)(nil)
	_ lock.LossNotifier              = (*lease)(nil)
)

// Ping asks the agent for the cluster's leader (GET /v1/status/leader) with
// ctx, and returns nil if it answered with one: an agent that cannot reach
// a leader fails too. After [Locker.Close] it returns an error matching [lock.ErrClosed].
func (l *Locker) Ping(ctx context.Context) error {
	if err := l.gate.CheckContext(ctx, "ping"); err != nil {
		return err
	}
	leader, err := l.client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return errs.OpError("ping", "", apiError(err))
	}
	if leader == "" {
		return errs.OpError("ping", "", errors.New("the agent knows no leader"))
	}
	return nil
}

// TTLLimits reports the session TTLs Consul honours: whole seconds, from
// the agent's session_ttl_min as the Locker was told it ([WithMinTTL], the
// min_ttl URL option; 10 s by default) to 24 h.
func (l *Locker) TTLLimits() lock.TTLLimits {
	return lock.TTLLimits{Min: l.cfg.minTTL, Max: MaxTTL, Step: TTLStep}
}

// ClaimFingerprint is [Locker.Claim] that also keeps fp (at most 64 bytes)
// in the lock key's value, written by the same transaction as the lock; a
// claim refused because another claim holds the key gets that claim's fp
// as holder (read by the request that reads the holder's index). It makes
// *Locker an idempotency.FingerprintClaimer.
func (l *Locker) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (lock.Lease, []byte, []byte, error) {
	if err := l.gate.CheckClaim(ctx, key, ttl, fp); err != nil {
		return nil, nil, nil, err
	}
	le, rec, holder, err := l.take(ctx, key, ttl, true, bytes.Clone(fp))
	if err != nil || le == nil {
		return nil, rec, holder, err
	}
	return le, nil, nil, nil
}

// Inspect reads the lock key and the record key of key, in one transaction.
// It makes *Locker a lock.Admin: key is the caller's key, escaped here as
// the leases escape it. Consul does not tell a session's remaining TTL, so
// Remaining and RecordRemaining are zero.
func (l *Locker) Inspect(ctx context.Context, key string) (lock.KeyInfo, error) {
	if err := l.gate.CheckKey(ctx, "inspect", key); err != nil {
		return lock.KeyInfo{}, err
	}
	path, recPath := l.lockPath(key), l.recordPath(key)
	info := lock.KeyInfo{Key: key}
	for _, p := range []string{path, recPath} {
		pair, _, err := l.client.KV().Get(p, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return info, errs.OpError("inspect", key, apiError(err))
		}
		switch {
		case pair == nil:
		case p == path && pair.Session != "":
			info.Held, info.Token = true, pair.ModifyIndex
		case p == recPath:
			info.Record, info.RecordSize = true, len(pair.Value)
		}
	}
	return info, nil
}

// ForceRelease deletes the lock key of key, whoever holds it, in one
// transaction checked against the holder's session and index (so it deletes
// the holding it read and no later one), and then destroys the holder's
// session, which no other holding uses: the holder's next Refresh (a
// session renewal), Release or Complete reports lock.ErrNotHeld, and its
// Lost channel is closed at once. Waiters wake on the deletion; Raft
// indexes, and so tokens, keep increasing. It returns an error matching
// lock.ErrNotHeld if no lease held key.
func (l *Locker) ForceRelease(ctx context.Context, key string) error {
	if err := l.gate.CheckKey(ctx, "force release", key); err != nil {
		return err
	}
	path := l.lockPath(key)
	for {
		pair, _, err := l.client.KV().Get(path, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		if err != nil {
			return errs.OpError("force release", key, apiError(err))
		}
		if pair == nil || pair.Session == "" {
			return errs.NotHeld("force release", key)
		}
		ok, resp, err := l.txn(ctx, api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: path, Session: pair.Session}},
			{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: path, Index: pair.ModifyIndex}},
		})
		if err != nil {
			return errs.OpError("force release", key, err)
		}
		if !ok {
			if f := failure(resp.Errors); f.denied() {
				return denied("force release", key, f.what)
			}
			continue // released or taken again in between: look again
		}
		// The holder's Release now fails and destroys the session rather
		// than pooling it, so this destroys no other holding's session.
		if _, err := l.client.Session().Destroy(pair.Session, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
			return errs.OpError("force release", key, fmt.Errorf("the key was deleted; destroying its session failed: %w", apiError(err)))
		}
		return nil
	}
}

// DeleteRecord deletes the idempotency record of key, so that the next
// Claim takes the key. It returns an error matching lock.ErrNotHeld if no
// record was stored.
func (l *Locker) DeleteRecord(ctx context.Context, key string) error {
	if err := l.gate.CheckKey(ctx, "delete record", key); err != nil {
		return err
	}
	recPath := l.recordPath(key)
	pair, _, err := l.client.KV().Get(recPath, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil || pair == nil {
		return errs.Found("delete record", key, pair != nil, apiError(err))
	}
	ok, _, err := l.txn(ctx, api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: recPath, Index: pair.ModifyIndex}}})
	if !ok && err == nil {
		return errs.NotHeldWhy("delete record", key, "changed or expired meanwhile")
	}
	return errs.Found("delete record", key, true, err)
}
