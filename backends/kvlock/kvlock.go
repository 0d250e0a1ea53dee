// Package kvlock turns a key-value store into an idemlock backend. Implement
// the five primitives of [KV] for your store (each one atomic step on the
// server) and [New] gives you a [lock.Locker] that is also an
// [idempotency.Store]: the fencing tokens, the owner checks, the atomicity
// of Claim and Complete, the undoing of takes whose reply was lost and the
// waiting are written here once, and pass conformance.Run and
// conformance.RunStore as long as the primitives keep their promises. The
// conformance package's doc explains why each primitive is needed.
//
//	backend := kvlock.New(myKV{client})
//	err := lock.Do(ctx, backend, "invoice/42", func(ctx context.Context, lease lock.Lease) error { … })
//	guard := idempotency.New(backend)
//
// # How it uses the store
//
// A lock key k is stored under "<prefix>l:<k>" (prefix "idemlock:" unless
// [WithPrefix] says otherwise). Its value is 'L' followed by 16 random bytes
// while a lease holds it, and 'R' followed by the record once an
// idempotency Claim was completed. Fencing tokens come from one counter,
// "<prefix>token", shared by every key: tokens then increase across all
// keys, which is more than the contract asks, and no per-key state outlives
// a lock. Under heavy load on many keys that counter is the hot spot.
//
//   - TryAcquire: Create the lock key, Increment the counter, then
//     CompareAndExpire the lock key with the lease's own value. The token is
//     drawn while the take holds the key, and the last step checks that it
//     still does: if the key was lost in between, the take reports
//     lock.ErrNotAcquired rather than a lease with a token out of order.
//     Three round trips.
//   - Refresh: CompareAndExpire. Release: CompareAndDelete. One each.
//   - Claim: as TryAcquire, but a key that holds a record returns the
//     record. Complete: CompareAndSwap of the lease's value for the record,
//     with the retention as TTL: the record and the end of the lease are one
//     step, so a concurrent Claim sees either the lease or the record.
//   - A take whose outcome is unknown (an error after Create was sent) is
//     undone with CompareAndDelete of its own value: at once when the
//     caller's context is still live, in the background (bounded by
//     lock.DefaultReleaseTimeout, awaited by [Locker.Close]) when it ended.
//
// Every call on a lease is one atomic request that compares the lease's own
// value, so concurrent calls on one lease never misreport ownership, and a
// Release retried after a lost reply answers lock.ErrNotHeld whether or not
// another lease took the key since.
//
// # Waiting
//
// If the KV also implements [Watcher], the Locker implements lock.Notifier
// and lock.Acquire wakes on changes of the key; every subscriber of a key is
// woken, so none is stranded by another that gives up. Otherwise
// lock.Acquire polls, never sleeping past the holder's remaining TTL when
// Create reports it.
//
// # Health, limits and administration
//
// *Locker implements the contract's optional interfaces through its KV:
// Ping calls the KV's Ping if it is a lock.Pinger, TTLLimits reports the
// KV's if it is a lock.TTLLimiter, and the lock.Admin methods (Inspect,
// ForceRelease, DeleteRecord, taking the caller's key) need the KV to be a
// [Reader]; without the capability each returns an error matching
// errors.ErrUnsupported. ClaimFingerprint (idempotency.FingerprintClaimer)
// needs nothing more: the fingerprint is kept in the lease's value, stored
// by the same Create. A holder learns that its key was deleted by hand, or
// by ForceRelease, from its next Refresh: under lock.KeepAlive with the
// default interval, at most a third of the TTL plus one round trip later.
//
// # Keys and TTLs
//
// Any key the contract accepts (lock.MaxKeyLen bytes of UTF-8) is passed to
// the store behind the prefix; a store that cannot hold such keys must
// escape or hash them in its KV implementation, one-to-one. TTLs are the
// store's: a KV must round a TTL it cannot represent up, never down.
package kvlock

import (
	"context"
	"crypto/rand"
	"errors"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"github.com/idemlock/lock/idempotency"
)

// KV is what a key-value store must provide. Each method is one atomic step
// on the server, with TTLs counted by the server from when it handles the
// request. Every method honours its context, including while a request is
// in flight, and returns an error (never a false "not done") when it cannot
// tell whether the server applied the request.
type KV interface {
	// Create stores value under key, to expire after ttl, if key is absent
	// (or expired), and reports created. Otherwise it stores nothing and
	// returns key's current value and its remaining time to live, or zero
	// if the store cannot tell.
	Create(ctx context.Context, key string, value []byte, ttl time.Duration) (created bool, current []byte, remaining time.Duration, err error)
	// CompareAndDelete deletes key if its value is old, and reports whether
	// it did.
	CompareAndDelete(ctx context.Context, key string, old []byte) (bool, error)
	// CompareAndExpire makes key expire ttl from now if its value is old,
	// and reports whether it did.
	CompareAndExpire(ctx context.Context, key string, old []byte, ttl time.Duration) (bool, error)
	// CompareAndSwap replaces key's value by value, to expire ttl from now,
	// if its value is old, and reports whether it did. A value larger than
	// the store holds is refused with an error.
	CompareAndSwap(ctx context.Context, key string, old, value []byte, ttl time.Duration) (bool, error)
	// Increment adds one to the counter under key (absent counts as zero)
	// and returns the new value. The counter never expires and is never
	// reset: fencing tokens come from it.
	Increment(ctx context.Context, key string) (uint64, error)
}

// Watcher is an optional capability of a KV: telling when a key changes.
// With it, the Locker implements lock.Notifier.
type Watcher interface {
	// Watch calls changed after every change of key (a delete, a swap, and
	// an expiry if the store reports those) until stop is called. changed
	// must not block; it may be called from any goroutine, and more often
	// than the key changed. Once Watch returns, no change goes unreported.
	Watch(ctx context.Context, key string, changed func()) (stop func(), err error)
}

// errs makes the package's errors.
const errs = driver.Name("kvlock")

// Option configures a Locker; [New] reports a bad one.
type Option func(*Locker) error

// WithPrefix sets the prefix of every key the Locker stores (default
// "idemlock:").
func WithPrefix(prefix string) Option {
	return func(l *Locker) error { l.prefix = prefix; return nil }
}

// Locker is a lock.Locker and idempotency.Store on a KV. Safe for
// concurrent use.
type Locker struct {
	gate   driver.Gate // for its checks: Close frees nothing that calls need
	kv     KV
	prefix string
	undos  sync.WaitGroup // background undos of takes with unknown outcome
}

// Backend is what [New] returns: a lock.Locker that is also an
// idempotency.Store and a lock.Backend (so an opener registered with
// lock.Register can return it).
type Backend interface {
	idempotency.Store
	// Close waits for takes with an unknown outcome to be undone; it does
	// not close the store.
	Close() error
}

// New returns a Backend on kv: a *Locker, or when kv implements [Watcher]
// a type that embeds *Locker and also implements lock.Notifier
// (lock.Acquire finds that out by a type assertion). A nil kv or a bad
// option is an error matching lock.ErrInvalidArgument.
func New(kv KV, opts ...Option) (Backend, error) {
	if kv == nil {
		return nil, errs.InvalidArgument("nil KV")
	}
	l := &Locker{gate: driver.Gate{Name: errs, ServeAfterClose: true}, kv: kv, prefix: "idemlock:"}
	if err := driver.Apply(l, opts); err != nil {
		return nil, err
	}
	if w, ok := kv.(Watcher); ok {
		return &notifying{Locker: l, w: w}, nil
	}
	return l, nil
}

// Close waits for takes with an unknown outcome to be undone. It does not
// close the store: the KV belongs to the caller.
func (l *Locker) Close() error {
	l.undos.Wait()
	return nil
}

const (
	leaseTag  = 'L'
	recordTag = 'R'
)

func (l *Locker) lockKey(key string) string { return l.prefix + "l:" + key }
func (l *Locker) counter() string           { return l.prefix + "token" }

// TryAcquire takes key for ttl if no lease holds it. A key that holds an
// idempotency record (see Complete) counts as held.
func (l *Locker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	le, rec, _, err := l.checkedTake(ctx, "take", key, ttl)
	if err != nil {
		return nil, err
	}
	if rec != nil {
		return nil, &lock.NotAcquiredError{Key: key}
	}
	return le, nil
}

// checkedTake is take without a fingerprint, after the Gate's checks.
func (l *Locker) checkedTake(ctx context.Context, op, key string, ttl time.Duration) (*lease, []byte, []byte, error) {
	if err := l.gate.Check(ctx, op, key, ttl); err != nil {
		return nil, nil, nil, err
	}
	return l.take(ctx, key, ttl, nil)
}

// take creates the lock key, draws a token while holding it, and checks
// that it still holds it. It returns a lease, or the record stored under
// key, or an error and the holder's fingerprint. A non-nil fp is kept in
// the lease's value, after its owner id.
func (l *Locker) take(ctx context.Context, key string, ttl time.Duration, fp []byte) (*lease, []byte, []byte, error) {
	value := make([]byte, ownerLen, ownerLen+1+len(fp))
	value[0] = leaseTag
	_, _ = rand.Read(value[1:ownerLen])
	if fp != nil {
		value = append(append(value, '/'), fp...)
	}
	lk := l.lockKey(key)
	sent := time.Now()
	created, cur, remaining, err := l.kv.Create(ctx, lk, value, ttl)
	if err != nil {
		l.undo(ctx, lk, value)
		return nil, nil, nil, opError("take", key, err)
	}
	if !created {
		if len(cur) > 0 && cur[0] == recordTag {
			return nil, cur[1:], nil, nil
		}
		return nil, nil, fingerprintOf(cur), &lock.NotAcquiredError{Key: key, Remaining: remaining}
	}
	token, err := l.kv.Increment(ctx, l.counter())
	if err != nil {
		l.undo(ctx, lk, value)
		return nil, nil, nil, opError("take", key, err)
	}
	// The token was drawn while the take held the key; if the key was lost
	// in the meantime, a later holder may have a smaller token: no lease.
	held, err := l.kv.CompareAndExpire(ctx, lk, value, ttl)
	if err != nil {
		l.undo(ctx, lk, value)
		return nil, nil, nil, opError("take", key, err)
	}
	if !held {
		return nil, nil, nil, &lock.NotAcquiredError{Key: key}
	}
	le := &lease{l: l, lockKey: lk, value: value}
	le.Init(&l.gate, key, token, sent, ttl)
	return le, nil, nil, nil
}

// undo deletes the lock key if it still holds value: a take whose outcome
// is unknown must not keep the key for its whole TTL. It runs at once while
// ctx is live, else in the background, bounded by
// lock.DefaultReleaseTimeout.
func (l *Locker) undo(ctx context.Context, lk string, value []byte) {
	bg, cancel := context.WithTimeout(context.WithValue(context.WithoutCancel(ctx), undoKey{}, true), lock.DefaultReleaseTimeout)
	if ctx.Err() == nil {
		defer cancel()
		_, _ = l.kv.CompareAndDelete(bg, lk, value)
		return
	}
	l.undos.Go(func() {
		defer cancel()
		_, _ = l.kv.CompareAndDelete(bg, lk, value)
	})
}

type undoKey struct{}

// IsUndo reports whether a KV request with context ctx is the Locker
// undoing a take whose outcome was unknown: a CompareAndDelete that may run
// after the call that caused it returned, with a context of its own. A KV
// may log it; a test that injects faults into the requests of one call
// (see conformance.Faults) must leave it alone.
func IsUndo(ctx context.Context) bool {
	v, _ := ctx.Value(undoKey{}).(bool)
	return v
}

// opError wraps an error of the store. It never matches lock.ErrNotHeld or
// lock.ErrNotAcquired: only the store's answers say those.
func opError(op, key string, err error) error {
	if errors.Is(err, lock.ErrNotHeld) || errors.Is(err, lock.ErrNotAcquired) {
		err = errors.New(err.Error())
	}
	return errs.OpError(op, key, err)
}
