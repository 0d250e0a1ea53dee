package pglock

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/jackc/pgx/v5/pgconn"
)

// lease is one holding of a lock: the row of key while its token is ours.
type lease struct {
	l     *Locker
	key   string
	bkey  []byte
	hash  uint64
	token int64

	// sem serialises Refresh, Release and Complete on this lease (a
	// channel, so that waiting for it honours the caller's context).
	sem  chan struct{}
	done bool // released, completed or known lost; guarded by sem

	mu       sync.Mutex
	deadline time.Time
}

func (le *lease) Key() string   { return le.key }
func (le *lease) Token() uint64 { return uint64(le.token) }

// Deadline returns the local time the latest successful take or refresh was
// sent plus its TTL: the server's expiry is no earlier.
func (le *lease) Deadline() time.Time {
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.deadline
}

// acquire takes the lease's semaphore, or returns ctx's error.
func (le *lease) acquire(ctx context.Context) error {
	select {
	case le.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (le *lease) unlock() { <-le.sem }

// Refresh extends the lease to ttl from now, counted by the server, in one
// statement guarded by the lease's token; a lease that expired or was taken
// over gets an error matching lock.ErrNotHeld and changes nothing.
func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	if err := le.acquire(ctx); err != nil {
		return err
	}
	defer le.unlock()
	if le.done {
		return notHeld("refresh", le.key, "")
	}
	sent := time.Now()
	var tag pgconn.CommandTag
	err := le.l.run(ctx, func() (err error) {
		tag, err = le.l.pool.Exec(ctx, le.l.sql.refresh, le.bkey, le.token, micros(ttl))
		return err
	})
	if err != nil {
		return le.l.opError("refresh", le.key, ctx, err)
	}
	if tag.RowsAffected() != 1 {
		le.done = true
		return notHeld("refresh", le.key, "expired or taken over")
	}
	le.mu.Lock()
	le.deadline = sent.Add(ttl)
	le.mu.Unlock()
	return nil
}

// Release deletes the lease's row in one statement guarded by its token, so
// it never deletes a newer holder's row, and wakes the key's waiters if a
// failed take marked the row as waited for. A lease that expired (its row
// is deleted all the same if nobody took it over) or was taken over gets an
// error matching lock.ErrNotHeld.
func (le *lease) Release(ctx context.Context) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	if err := le.acquire(ctx); err != nil {
		return err
	}
	defer le.unlock()
	if le.done {
		return notHeld("release", le.key, "")
	}
	var live bool
	var notified int64
	err := le.l.run(ctx, func() error {
		return le.l.pool.QueryRow(ctx, le.l.sql.release, le.bkey, le.token, le.l.channel, le.payload()).Scan(&live, &notified)
	})
	switch {
	case errors.Is(err, errNoRows):
		le.done = true
		return notHeld("release", le.key, "expired and taken over, or already released")
	case err != nil:
		return le.l.opError("release", le.key, ctx, err) // unknown outcome: a retry tells
	}
	le.done = true
	if !live {
		return notHeld("release", le.key, "expired")
	}
	return nil
}

// payload is the NOTIFY payload of the lease's key.
func (le *lease) payload() string { return payload(le.hash) }

func payload(h uint64) string { return strconv.FormatUint(h, 36) }
