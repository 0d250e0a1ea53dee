package pglock

import (
	"context"
	"errors"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"github.com/jackc/pgx/v5/pgconn"
)

var _ driver.FullBackend = (*Locker)(nil)

// Ping takes a connection from the pool and pings the server with it
// (pgxpool's Ping), honouring ctx, and returns nil if it answered. After
// [Locker.Close] it returns an error matching [lock.ErrClosed].
func (l *Locker) Ping(ctx context.Context) error {
	if err := l.gate.CheckContext(ctx, "ping"); err != nil {
		return err
	}
	if err := l.pool.Ping(ctx); err != nil {
		return errs.OpErrorCtx(ctx, "ping", "", err)
	}
	return nil
}

// TTLLimits reports PostgreSQL's limits: TTLs are counted in whole
// microseconds, with no minimum and no maximum a time.Duration can reach.
func (l *Locker) TTLLimits() lock.TTLLimits { return lock.TTLLimits{Step: time.Microsecond} }

// ClaimFingerprint is [Locker.Claim] that also stores fp (at most 64 bytes)
// in the key's row, written by the same statement as the lease; a claim
// refused because another claim holds the key gets that claim's fp as
// holder from the same statement. It makes *Locker an
// idempotency.FingerprintClaimer.
func (l *Locker) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (lock.Lease, []byte, []byte, error) {
	if err := l.gate.CheckClaim(ctx, key, ttl, fp); err != nil {
		return nil, nil, nil, err
	}
	le, t, err := l.take(ctx, key, ttl, fp)
	return driver.LeaseOf(le), t.record, t.holder, err
}

// Inspect reads the row of key in one statement. It makes *Locker a
// lock.Admin: key is the caller's key.
func (l *Locker) Inspect(ctx context.Context, key string) (lock.KeyInfo, error) {
	if err := l.gate.CheckKey(ctx, "inspect", key); err != nil {
		return lock.KeyInfo{}, err
	}
	info := lock.KeyInfo{Key: key}
	var (
		token         int64
		record        bool
		size, remains int64
	)
	err := l.run(ctx, func() error {
		return l.pool.QueryRow(ctx, l.sql.inspect, []byte(key)).Scan(&token, &record, &size, &remains)
	})
	switch {
	case errors.Is(err, errNoRows):
		return info, nil
	case err != nil:
		return info, errs.OpErrorCtx(ctx, "inspect", key, err)
	case record:
		info.Record, info.RecordSize, info.RecordRemaining = true, int(size), microDuration(remains)
	default:
		info.Held, info.Token, info.Remaining = true, uint64(token), microDuration(remains)
	}
	return info, nil
}

// ForceRelease deletes the lease row of key, whoever holds it, in one
// statement, and wakes the key's waiters as a release does: the holder's
// next Refresh, Release or Complete (each guarded by its token) reports
// lock.ErrNotHeld, and tokens come on from the sequence. It returns an
// error matching lock.ErrNotHeld if no live lease held key.
func (l *Locker) ForceRelease(ctx context.Context, key string) error {
	if err := l.gate.CheckKey(ctx, "force release", key); err != nil {
		return err
	}
	var notified int64
	err := l.run(ctx, func() error {
		return l.pool.QueryRow(ctx, l.sql.forceRelease, []byte(key), l.channel, payload(hash64(key))).Scan(&notified)
	})
	switch {
	case errors.Is(err, errNoRows):
		return errs.NotHeldWhy("force release", key, "no lease holds it")
	case err != nil:
		return errs.OpErrorCtx(ctx, "force release", key, err)
	}
	return nil
}

// DeleteRecord deletes the idempotency record of key in one statement, so
// that the next Claim takes the key. It returns an error matching
// lock.ErrNotHeld if no record was stored.
func (l *Locker) DeleteRecord(ctx context.Context, key string) error {
	if err := l.gate.CheckKey(ctx, "delete record", key); err != nil {
		return err
	}
	var tag pgconn.CommandTag
	err := l.run(ctx, func() (err error) {
		tag, err = l.pool.Exec(ctx, l.sql.deleteRecord, []byte(key))
		return err
	})
	if err != nil {
		return errs.OpErrorCtx(ctx, "delete record", key, err)
	}
	return errs.Found("delete record", key, tag.RowsAffected() > 0, nil)
}
