package redislock

import (
	"context"
	"strings"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// lease is one holding of one Redis lock. Key, Token, Deadline, its state
// and the serialisation of Release and Complete come from driver.Lease.
type lease struct {
	driver.Lease
	l        *Locker
	lock     string // the lock's Redis key, also its channel
	lockArg  any    // lock as a command argument, converted once
	value    string // the lock's value while this lease holds it
	valueArg any    // value as a command argument, converted once

	args [8]any // the take's command arguments
}

// Refresh extends the lease to ttl from now if it still holds its lock,
// in one round trip; otherwise it returns an error matching lock.ErrNotHeld.
func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	if err := le.Check("refresh"); err != nil {
		return err
	}
	ms := millis(ttl)
	sent := time.Now()
	n, err := refreshScript.run(ctx, le.l.client, []any{nil, nil, 1, le.lockArg, le.valueArg, ms}).Int64()
	if err != nil {
		return le.OpError("refresh", err)
	}
	if n != 1 {
		le.Lose()
		return le.NotHeld("refresh")
	}
	le.Extend(sent, msDuration(ms))
	return nil
}

// Release gives the lock up if this lease still holds it, in one round trip,
// and wakes the key's waiters; otherwise it returns an error matching
// lock.ErrNotHeld and leaves the key alone.
func (le *lease) Release(ctx context.Context) error {
	return le.end(ctx, "release", le.l.release, []any{nil, nil, 2, le.lockArg, le.marker(), le.valueArg})
}

// marker returns the name of the key that a release or completion of this
// lease leaves behind (see the scripts): the lock's name, ":e:" and the
// lease's nonce.
func (le *lease) marker() string {
	_, nonce, _ := strings.Cut(le.value, ":")
	return le.lock + ":e:" + nonce
}

// end runs the release or complete script until it succeeds once or
// reports the lease not held. A run whose outcome is unknown (an error)
// leaves the lease as it was: the next run finds its marker if it went
// through.
func (le *lease) end(ctx context.Context, op string, s *script, args []any) error {
	return le.End(ctx, op, func() error {
		n, err := s.run(ctx, le.l.client, args).Int64()
		if err != nil {
			return le.OpError(op, err) // unknown outcome: a retry will tell
		}
		if n != 1 {
			return le.NotHeld(op)
		}
		return nil
	})
}
