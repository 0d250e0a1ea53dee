package driver

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock"
)

// MaxFingerprint is the longest request fingerprint, in bytes, that a
// backend's ClaimFingerprint accepts (idempotency.FingerprintClaimer).
const MaxFingerprint = 64

// Gate is the part of a Locker that every backend has: its name for
// errors, whether it was closed, a Close that runs once, and the checks
// each call starts with. Embed it (or keep it as a field) in the Locker and
// set Name before the Locker is shared:
//
//	type Locker struct {
//		gate driver.Gate
//		…
//	}
//	l := &Locker{gate: driver.Gate{Name: "mylock"}}
//
// A Gate must not be copied after first use. Its methods are safe for
// concurrent use.
type Gate struct {
	// Name is the backend's name, shown by every error the Gate makes.
	Name Name
	// ServeAfterClose makes the Check methods skip the closed check: for
	// a backend whose Close frees only optional parts (memlock's Ping
	// state, redislock's subscriptions), so that takes and leases keep
	// working after Close on a client that stays open. Such a backend
	// checks [Gate.IsClosed] itself where Close does matter.
	ServeAfterClose bool

	closed   atomic.Bool
	once     sync.Once
	closeErr error
}

// Close marks the Gate closed, then runs fn (which frees what the Locker
// holds; it may be nil) once, and returns fn's error, on this and every
// later call. Calls that check the Gate after Close started get an error
// matching [lock.ErrClosed].
func (g *Gate) Close(fn func() error) error {
	g.once.Do(func() {
		g.closed.Store(true)
		if fn != nil {
			g.closeErr = fn()
		}
	})
	return g.closeErr
}

// IsClosed reports whether Close was called.
func (g *Gate) IsClosed() bool { return g.closed.Load() }

// CheckClosed returns an error matching [lock.ErrClosed] (naming op and
// key, which may be empty) once Close was called, and nil before (and
// always nil with ServeAfterClose).
func (g *Gate) CheckClosed(op, key string) error {
	if !g.ServeAfterClose && g.closed.Load() {
		return g.Name.Closed(op, key)
	}
	return nil
}

// CheckContext starts a call that takes no key (Ping, Complete): it
// checks ctx as [lock.CheckContext] does and then that the Gate is open.
func (g *Gate) CheckContext(ctx context.Context, op string) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	return g.CheckClosed(op, "")
}

// Check starts a call that takes key for ttl (TryAcquire, Claim): it
// checks the arguments as [lock.CheckArgs] does and then that the Gate is
// open, so that every backend rejects the same input with the same typed
// errors.
func (g *Gate) Check(ctx context.Context, op, key string, ttl time.Duration) error {
	if err := lock.CheckArgs(ctx, key, ttl); err != nil {
		return err
	}
	return g.CheckClosed(op, key)
}

// CheckTicket starts a queue ticket's TryAcquire ([lock.Ticket]): what
// [Gate.Check] checks for a take, then the ticket, which refuses an attempt
// once closed with an error matching lock.ErrInvalidArgument.
func (g *Gate) CheckTicket(ctx context.Context, key string, ttl time.Duration, closed bool) error {
	if err := g.Check(ctx, "take", key, ttl); err != nil {
		return err
	}
	if closed {
		return g.Name.InvalidArgument("TryAcquire on a closed ticket")
	}
	return nil
}

// CheckKey starts a call on key without a TTL (Subscribe, Inspect,
// ForceRelease, DeleteRecord): ctx, key and then the Gate.
func (g *Gate) CheckKey(ctx context.Context, op, key string) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	if err := lock.ValidateKey(key); err != nil {
		return err
	}
	return g.CheckClosed(op, key)
}

// CheckClaim starts ClaimFingerprint: [Gate.Check], and fp at most
// [MaxFingerprint] bytes (otherwise an error matching
// [lock.ErrInvalidArgument]).
func (g *Gate) CheckClaim(ctx context.Context, key string, ttl time.Duration, fp []byte) error {
	if err := g.Check(ctx, "claim", key, ttl); err != nil {
		return err
	}
	if len(fp) > MaxFingerprint {
		return g.Name.InvalidArgument("fingerprint of %d bytes, at most %d", len(fp), MaxFingerprint)
	}
	return nil
}

// CheckComplete starts Complete: ctx, the Gate, and a positive retention
// (otherwise a [*lock.TTLError]).
func (g *Gate) CheckComplete(ctx context.Context, retention time.Duration) error {
	if err := g.CheckContext(ctx, "complete"); err != nil {
		return err
	}
	if retention <= 0 {
		return &lock.TTLError{TTL: retention, Reason: "retention must be positive"}
	}
	return nil
}

// Leaser is implemented by every type that embeds [Lease] (by pointer
// receiver): the lease types [Own] converts to.
type Leaser interface {
	lock.Lease
	driverLease() *Lease
}

// Own returns ls as the backend's own lease type T (a pointer type that
// embeds [Lease]) if it is a non-nil lease that a Locker with Gate g
// handed out; otherwise an error matching [lock.ErrInvalidArgument] that
// names op. Complete calls it on the lease it is given:
//
//	le, err := driver.Own[*lease](&l.gate, "Complete", ls)
func Own[T Leaser](g *Gate, op string, ls lock.Lease) (T, error) {
	var zero T
	le, ok := ls.(T)
	if !ok || any(le) == any(zero) || le.driverLease().gate != g {
		return zero, g.Name.InvalidArgument("%s with a lease this Locker did not hand out (%T)", op, ls)
	}
	return le, nil
}

// FullBackend is what every built-in backend's *Locker implements: the
// contract's Backend and its optional interfaces for health checks, TTL
// limits, administration and fingerprinted claims. A backend asserts it
// in one line:
//
//	var _ driver.FullBackend = (*Locker)(nil)
type FullBackend interface {
	lock.Backend
	lock.Pinger
	lock.TTLLimiter
	lock.Admin
	// ClaimFingerprint is the method of idempotency.FingerprintClaimer:
	// Claim that also stores fp (at most MaxFingerprint bytes) with the
	// lease, and reports the holder's fp when another claim holds key.
	ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (le lock.Lease, record, holder []byte, err error)
}

// LeaseOf returns le as a lock.Lease, or a nil interface (never an
// interface holding a nil pointer) when le is nil, so that Claim can
// return a take's outcome as it is:
//
//	le, record, _, err := l.take(ctx, key, ttl)
//	return driver.LeaseOf(le), record, err
func LeaseOf[T Leaser](le T) lock.Lease {
	var zero T
	if any(le) == any(zero) {
		return nil
	}
	return le
}

// Completing starts Complete: [Gate.CheckComplete], then [Own] of the
// lease it was given, so that Complete begins with one call:
//
//	le, err := driver.Completing[*lease](ctx, &l.gate, ls, retention)
func Completing[T Leaser](ctx context.Context, g *Gate, ls lock.Lease, retention time.Duration) (T, error) {
	if err := g.CheckComplete(ctx, retention); err != nil {
		var zero T
		return zero, err
	}
	return Own[T](g, "Complete", ls)
}
