// Package lock is the contract of idemlock: distributed locks with fencing
// tokens on the backend an organization already runs.
//
// A [Locker] takes [Lease]s on named keys. Backends live in sub-packages of
// backends/ (memlock, redislock, etcdlock, consullock, memcachedlock) and all
// pass the same behavioural suite in package conformance. Around the contract
// this package provides, once for every backend:
//
//   - [Acquire], which waits for a key: woken by the backend's release events
//     when it implements [Notifier], otherwise by jittered polling capped by
//     the holder's remaining time;
//   - [KeepAlive], which renews a lease in the background and hands out a
//     context that is cancelled the moment the lease is lost;
//   - [Do], which acquires, runs a function under keep-alive (handing it the
//     lease, for its fencing token) and releases;
//   - [Open], a URL scheme registry so the backend can be a config value;
//   - [Observe], which turns observation on: wrap the Locker once and every
//     helper reports its waits, holds, renewals and losses to an observer
//     (package observe: a log/slog adapter; OpenTelemetry in the module
//     observers/otellock). A Locker that is not wrapped costs nothing.
//
// # Keys
//
// A key is any non-empty, valid UTF-8 string of at most [MaxKeyLen] bytes.
// Spaces, slashes, control characters and NUL are all allowed: each backend
// escapes or hashes what its server cannot store, and two different keys never
// share a lock. Anything else is rejected with an error that matches
// [ErrInvalidKey] and is a [*KeyError].
//
// # TTLs
//
// Every lease has a time to live, counted by the server from when it handles
// the request (never from the client's wall clock). A TTL must be positive;
// otherwise the error matches [ErrInvalidTTL]. Backends whose servers count in
// coarser steps round up, never down, and say so in their package docs.
//
// # Fencing
//
// [Lease.Token] is a fencing token: strictly greater than the token of every
// earlier lease on the same key. A lock protects against concurrent holders
// only as long as leases do not expire under a paused or partitioned holder;
// a resource that rejects writes carrying a token lower than one it has seen
// is safe even then.
package lock

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Locker takes leases on named locks. Safe for concurrent use.
type Locker interface {
	// TryAcquire makes one attempt to take key for ttl and never waits.
	// If another lease holds key it returns an error for which
	// errors.Is(err, ErrNotAcquired) is true.
	TryAcquire(ctx context.Context, key string, ttl time.Duration) (Lease, error)
}

// Lease is one holding of one lock.
//
// A Lease's methods are safe for concurrent use: Refresh and Release may run
// at the same time from different goroutines (a [Keeper] renewing while the
// owner releases, two renewals at once), and no interleaving makes either
// misreport ownership. A call returns ErrNotHeld only if the lease no longer
// holds its key, and nil only if it held the key when the call took effect;
// a Refresh never revives a lease that a Release ended.
//
// A call that crosses the network has three outcomes: done, not done, or
// unknown (the server may have applied it and the reply was lost, or the
// context ended while it was in flight). An unknown outcome is an error
// that matches neither ErrNotHeld nor ErrNotAcquired. After it the lease
// never reports holding a key that another lease holds: the next Refresh
// asks the server before it reports success. A Release may be retried
// after such an error: it never frees another lease's holding, and it
// returns nil or an error matching ErrNotHeld; if the earlier call did
// release the key, which of the two is each backend's documented choice
// (nil when the backend keeps evidence of its own release, ErrNotHeld
// otherwise, as for any Release of a lease that no longer holds its key).
type Lease interface {
	// Key returns the key this lease holds, as it was passed to TryAcquire.
	Key() string
	// Token is a fencing token: strictly greater than the Token of every
	// earlier lease on the same key, even after that lease expired and the
	// key's storage was removed.
	Token() uint64
	// Refresh extends the lease to ttl from now. If the lease already expired
	// or was taken, it returns an error with errors.Is(err, ErrNotHeld) and
	// changes nothing.
	Refresh(ctx context.Context, ttl time.Duration) error
	// Release gives the lock up. It deletes only this lease's own holding:
	// if the lease already expired (and perhaps was taken by someone else)
	// it returns ErrNotHeld and leaves the new holder alone.
	Release(ctx context.Context) error
}

// MaxKeyLen is the longest key, in bytes, that every backend accepts.
const MaxKeyLen = 1024

var (
	// ErrNotAcquired means the key is held by another lease.
	ErrNotAcquired = errors.New("lock: not acquired: key is held by another lease")
	// ErrNotHeld means this lease no longer holds its lock: it expired, was
	// released, or was taken over.
	ErrNotHeld = errors.New("lock: lease not held")
	// ErrInvalidKey is matched by every error about a key the contract does
	// not accept; the error is a [*KeyError].
	ErrInvalidKey = errors.New("lock: invalid key")
	// ErrInvalidTTL is matched by every error about a TTL that is not
	// positive or that the backend cannot honour; the error is a [*TTLError].
	ErrInvalidTTL = errors.New("lock: invalid TTL")
	// ErrInvalidArgument is matched by errors about other bad arguments: a
	// nil Locker, Lease, context or function, or an out-of-range option.
	ErrInvalidArgument = errors.New("lock: invalid argument")
	// ErrClosed is matched by the error of a call on a Locker (or on one of
	// its leases) after the Locker was closed, when the backend refuses such
	// calls.
	ErrClosed = errors.New("lock: Locker closed")
)

// KeyError describes a key that was rejected.
type KeyError struct {
	Key    string // the rejected key, possibly truncated for display
	Reason string // why it was rejected
}

func (e *KeyError) Error() string {
	return fmt.Sprintf("lock: invalid key %q: %s", e.Key, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidKey) true.
func (e *KeyError) Unwrap() error { return ErrInvalidKey }

// TTLError describes a TTL that was rejected.
type TTLError struct {
	TTL    time.Duration
	Reason string
}

func (e *TTLError) Error() string {
	return fmt.Sprintf("lock: invalid TTL %v: %s", e.TTL, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidTTL) true.
func (e *TTLError) Unwrap() error { return ErrInvalidTTL }

// NotAcquiredError is what TryAcquire returns when the key is held, carrying
// what the failed attempt learnt about the holder. It matches
// [ErrNotAcquired]. Backends fill in what they know; zero fields mean unknown.
type NotAcquiredError struct {
	Key string
	// Remaining is the holder's remaining time to live as the server
	// reported it, or zero when unknown. Waiters never sleep past it.
	Remaining time.Duration
	// Version is the backend's version of the key seen by the failed attempt
	// (etcd's revision, Consul's modify index), or zero. A [Subscription]
	// uses it to wait for a change after exactly that version.
	Version uint64
}

func (e *NotAcquiredError) Error() string {
	if e.Remaining > 0 {
		return fmt.Sprintf("lock: key %q is held by another lease (expires in %v at most)", displayKey(e.Key), e.Remaining)
	}
	return fmt.Sprintf("lock: key %q is held by another lease", displayKey(e.Key))
}

// Unwrap makes errors.Is(err, ErrNotAcquired) true.
func (e *NotAcquiredError) Unwrap() error { return ErrNotAcquired }

// Notifier is an optional interface of a Locker whose backend can tell when a
// key is released. [Acquire] discovers it by type assertion and then waits for
// events instead of polling.
type Notifier interface {
	// Subscribe starts watching key for releases. Once it returns, no release
	// of key goes unreported to the subscription.
	Subscribe(ctx context.Context, key string) (Subscription, error)
}

// Subscription is a stream of "key may be free" events from a [Notifier].
// It is used by one goroutine at a time.
type Subscription interface {
	// Wait blocks until key may have been freed after the attempt that
	// returned held (held may be nil: then after Subscribe), or until ctx
	// ends, when it returns ctx's error. A nil return means "try again":
	// spurious wake-ups are allowed, missed ones are not. Expiry need not
	// produce an event; callers bound the wait by held.Remaining.
	Wait(ctx context.Context, held *NotAcquiredError) error
	// Close ends the subscription and frees what it holds. It may be called
	// more than once.
	Close() error
}

// Deadliner is an optional interface of a Lease that knows, by the local
// monotonic clock, until when it is held at the least: the time its take or
// latest successful refresh was sent, plus the TTL it was granted. [KeepAlive]
// declares the lease lost a margin before it (see KeepAlive); without it,
// KeepAlive counts from its own start.
type Deadliner interface {
	Deadline() time.Time
}

// LossNotifier is an optional interface of a Lease whose backend learns on
// its own that the lease was lost (for example a session invalidated by the
// server). The channel is closed at that moment; [KeepAlive] then cancels its
// context at once. Lost must return at once, without waiting on the server
// (KeepAlive calls it before it returns, and a partition must not hold it
// there): a backend that needs a request to watch for the loss starts it
// on a goroutine of its own.
type LossNotifier interface {
	Lost() <-chan struct{}
}

// ValidateKey reports whether key is acceptable under the contract's key
// rules. Backends call it first, so every backend rejects the same keys.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return &KeyError{Key: key, Reason: "empty"}
	case len(key) > MaxKeyLen:
		return &KeyError{Key: displayKey(key), Reason: fmt.Sprintf("%d bytes, longer than the %d-byte limit", len(key), MaxKeyLen)}
	case !utf8.ValidString(key):
		return &KeyError{Key: displayKey(key), Reason: "not valid UTF-8"}
	}
	return nil
}

// ValidateTTL reports whether ttl is positive.
func ValidateTTL(ttl time.Duration) error {
	if ttl <= 0 {
		return &TTLError{TTL: ttl, Reason: "must be positive"}
	}
	return nil
}

// CheckArgs validates the arguments every TryAcquire takes: a non-nil context
// that is not done, a valid key and a positive TTL. Backends call it first so
// that bad input gets the same typed error everywhere.
func CheckArgs(ctx context.Context, key string, ttl time.Duration) error {
	if err := CheckContext(ctx); err != nil {
		return err
	}
	if err := ValidateKey(key); err != nil {
		return err
	}
	return ValidateTTL(ttl)
}

// CheckRefresh validates the arguments of Lease.Refresh: a non-nil context
// that is not done and a positive TTL.
func CheckRefresh(ctx context.Context, ttl time.Duration) error {
	if err := CheckContext(ctx); err != nil {
		return err
	}
	return ValidateTTL(ttl)
}

// CheckContext returns an error matching [ErrInvalidArgument] for a nil
// context and ctx.Err() for one that is already done.
func CheckContext(ctx context.Context) error {
	if ctx == nil {
		return fmt.Errorf("%w: nil context", ErrInvalidArgument)
	}
	return ctx.Err()
}

// displayKey shortens a key for error messages.
func displayKey(key string) string {
	const max = 64
	if len(key) <= max {
		return key
	}
	return key[:max] + "…"
}
