package pglock

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"github.com/jackc/pgx/v5"
)

// Claim makes one attempt on key for the idempotency helper (it makes
// *Locker an idempotency.Store), in the take's one statement: a completed
// record stored under key is returned with a nil Lease; otherwise key is
// taken for ttl exactly as [Locker.TryAcquire] takes it. Looking for the
// record and taking the key are one atomic step on the key's row.
//
// A Claim finds the row locked while a [Locker.CompleteTx] of the key's
// holder is in an open transaction; it waits for that transaction, and then
// returns the record it committed (or, after a rollback, finds the key
// held).
func (l *Locker) Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error) {
	if err := l.gate.Check(ctx, "claim", key, ttl); err != nil {
		return nil, nil, err
	}
	le, t, err := l.take(ctx, key, ttl, nil)
	return driver.LeaseOf(le), t.record, err
}

// Complete stores record under the lease's key, kept for retention (counted
// by the server), and ends the lease, in one statement guarded by the
// lease's token: if the lease no longer holds its key, nothing is stored
// and the error matches lock.ErrNotHeld. Waiters of the key are woken as by
// a release, so that they find the record at once.
//
// Records larger than the Locker's limit are refused with
// [lock.ErrRecordTooLarge] and the lease is left as it was. A Complete
// retried after an error whose outcome was unknown reports success if the
// first attempt stored the record. lease must come from this Locker
// (otherwise the error matches lock.ErrInvalidArgument).
func (l *Locker) Complete(ctx context.Context, ls lock.Lease, record []byte, retention time.Duration) error {
	return l.complete(ctx, nil, ls, record, retention)
}

// CompleteTx is Complete inside the caller's transaction: it stores record
// under the lease's key in tx, so that the record and the business writes
// made in tx commit together or not at all. A crash before the commit
// leaves neither (the lease then expires and the work may run again); a
// crash after it leaves both, and every later Claim of the key returns the
// record, so the work never runs twice.
//
// It returns an error matching lock.ErrNotHeld if the lease no longer holds
// its key at the moment the statement runs (by the server's clock): then
// roll tx back, because another process may be doing the same work. Once it
// has returned nil, the key's row is locked by tx until it ends, so the
// lease cannot be taken over however long the commit takes: stop a
// lock.KeepAlive of the lease then (its refreshes would wait for tx), and
// commit. Claims of the key meanwhile wait for tx and then get the record.
// After a rollback the lease holds as before, if its TTL has not run out,
// and may be released or completed again.
//
// tx must belong to the database the Locker's pool connects to. Waiters
// of the key are woken when tx commits.
func (l *Locker) CompleteTx(ctx context.Context, tx pgx.Tx, ls lock.Lease, record []byte, retention time.Duration) error {
	if tx == nil {
		return errs.InvalidArgument("CompleteTx with a nil transaction")
	}
	return l.complete(ctx, tx, ls, record, retention)
}

// complete is Complete, or with a transaction CompleteTx.
func (l *Locker) complete(ctx context.Context, tx pgx.Tx, ls lock.Lease, record []byte, retention time.Duration) error {
	le, err := driver.Completing[*lease](ctx, &l.gate, ls, retention)
	if err != nil {
		return err
	}
	if len(record) > l.cfg.maxRecord {
		return errs.RecordTooLarge(le.Key(), len(record), l.cfg.maxRecord)
	}
	var stored, already bool
	var notified int64
	args := []any{le.bkey, le.token(), nonNil(record), micros(retention), l.channel, le.payload()}
	if tx != nil {
		// The lease stays open locally whatever happens: whether it
		// ended depends on tx.
		return le.Serial(ctx, func() error {
			if err := le.Check("complete"); err != nil {
				return err
			}
			if err := tx.QueryRow(ctx, l.sql.completeTx, args...).Scan(&stored, &notified, &already); err != nil {
				return errs.OpErrorCtx(ctx, "complete", le.Key(), err)
			}
			if !stored {
				return le.NotHeldWhy("complete", "expired, taken over or already completed")
			}
			return nil
		})
	}
	return le.End(ctx, "complete", func() error {
		err := l.run(ctx, func() error {
			return l.pool.QueryRow(ctx, l.sql.complete, args...).Scan(&stored, &notified, &already)
		})
		switch {
		case err != nil:
			return errs.OpErrorCtx(ctx, "complete", le.Key(), err) // unknown outcome: a retry tells
		case !stored && !already:
			return le.NotHeldWhy("complete", "expired or taken over")
		}
		return nil
	})
}

// nonNil makes a nil record an empty one: NULL means "held".
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// Cleanup deletes rows whose lease or record has expired, in batches, and
// returns how many it deleted. Rows that a statement has locked are left
// for the next run; a Locker made with [WithQueue] also deletes the
// expired entries of its waiters table. The Locker's cleaner calls it
// every cleanup interval (see [WithCleanupInterval]); expired rows never
// block a take, so calling it is only about the table's size.
func (l *Locker) Cleanup(ctx context.Context) (int64, error) {
	if err := l.gate.CheckContext(ctx, "cleanup"); err != nil {
		return 0, err
	}
	const batch = 1000
	var total int64
	for {
		tag, err := l.pool.Exec(ctx, l.sql.delete, batch)
		if missingTable(err) {
			return total, nil // nothing was ever stored
		}
		if err != nil {
			return total, errs.OpErrorCtx(ctx, "cleanup", "", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < batch {
			break
		}
	}
	if !l.cfg.queued {
		return total, nil
	}
	tag, err := l.pool.Exec(ctx, l.sql.deleteWaiters)
	switch {
	case missingTable(err):
		return total, nil // nobody ever queued
	case err != nil:
		return total, errs.OpErrorCtx(ctx, "cleanup", "", err)
	}
	return total + tag.RowsAffected(), nil
}

// cleanLoop runs Cleanup every interval, jittered by up to a fifth so that
// many processes' cleaners spread out, until Close.
func (l *Locker) cleanLoop() {
	defer l.wg.Done()
	t := time.NewTimer(jittered(l.cfg.cleanup))
	defer t.Stop()
	for {
		select {
		case <-l.bg.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(l.bg, max(l.cfg.cleanup, time.Second))
		_, err := l.Cleanup(ctx)
		cancel()
		_ = err // the next run tries again; nothing waits for this one
		t.Reset(jittered(l.cfg.cleanup))
	}
}

// jittered returns d plus up to a fifth of it, at random.
func jittered(d time.Duration) time.Duration {
	return d + rand.N(d/5+1)
}
