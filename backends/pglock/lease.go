package pglock

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"github.com/jackc/pgx/v5/pgconn"
)

// lease is one holding of a lock: the row of key while its token is ours.
// Key, Token, Deadline, the state and the serialisation of Refresh,
// Release and Complete come from driver.Lease (its turn is a channel, so
// that waiting for it honours the caller's context).
type lease struct {
	driver.Lease
	l    *Locker
	bkey []byte
	hash uint64
}

func newLease(l *Locker, key string, token int64, sent time.Time, ttl time.Duration) *lease {
	le := &lease{l: l, bkey: []byte(key), hash: hash64(key)}
	le.Init(&l.gate, key, uint64(token), sent, ttl)
	return le
}

// token is the lease's token as the table stores it.
func (le *lease) token() int64 { return int64(le.Token()) }

// Refresh extends the lease to ttl from now, counted by the server, in one
// statement guarded by the lease's token; a lease that expired or was taken
// over gets an error matching lock.ErrNotHeld and changes nothing.
func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	return le.Serial(ctx, func() error {
		if err := le.Check("refresh"); err != nil {
			return err
		}
		sent := time.Now()
		var tag pgconn.CommandTag
		err := le.l.run(ctx, func() (err error) {
			tag, err = le.l.pool.Exec(ctx, le.l.sql.refresh, le.bkey, le.token(), micros(ttl))
			return err
		})
		if err != nil {
			return errs.OpErrorCtx(ctx, "refresh", le.Key(), err)
		}
		if tag.RowsAffected() != 1 {
			le.Lose()
			return le.NotHeldWhy("refresh", "expired or taken over")
		}
		le.Extend(sent, ttl)
		return nil
	})
}

// Release deletes the lease's row in one statement guarded by its token, so
// it never deletes a newer holder's row, and wakes the key's waiters if a
// failed take marked the row as waited for. A lease that expired (its row
// is deleted all the same if nobody took it over) or was taken over gets an
// error matching lock.ErrNotHeld.
func (le *lease) Release(ctx context.Context) error {
	return le.End(ctx, "release", func() error {
		var live bool
		var notified int64
		var err error
		if le.l.cfg.queued {
			err = le.l.locked(ctx, le.Key(), le.l.sql.releaseQueued, []any{le.bkey, le.token(), le.l.channel, le.payload()}, &live, &notified)
		} else {
			err = le.l.run(ctx, func() error {
				return le.l.pool.QueryRow(ctx, le.l.sql.release, le.bkey, le.token(), le.l.channel, le.payload()).Scan(&live, &notified)
			})
		}
		switch {
		case errors.Is(err, errNoRows):
			return le.NotHeldWhy("release", "expired and taken over, or already released")
		case err != nil:
			return errs.OpErrorCtx(ctx, "release", le.Key(), err) // unknown outcome: a retry tells
		case !live:
			return le.NotHeldWhy("release", "expired")
		}
		return nil
	})
}

// payload is the NOTIFY payload of the lease's key.
func (le *lease) payload() string { return payload(le.hash) }

func payload(h uint64) string { return strconv.FormatUint(h, 36) }
