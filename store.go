package lock

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Store is a Locker that also keeps records: the storage of the idempotency
// helper (package idempotency), where a key is first claimed with a lease
// while its work runs and then completed with a record that later claims
// return. Every built-in backend is a Store, and so is every [Backend].
//
// Keys used with Claim are not meant to be used with TryAcquire as well.
type Store interface {
	Locker
	// Claim makes one attempt on key. If a completed record is stored under
	// key it returns that record and a nil Lease. Otherwise it tries to take
	// key for ttl exactly as TryAcquire does: an error matching
	// ErrNotAcquired while another claim is in progress, else the new Lease
	// and a nil record. Looking for the record and taking the lease are one
	// atomic step: a record stored by Complete is never missed by a Claim
	// that then takes the key.
	Claim(ctx context.Context, key string, ttl time.Duration) (Lease, []byte, error)
	// Complete stores record under the key of lease, to be returned by Claim
	// for retention, and ends the lease, in one atomic step — provided the
	// lease (which Claim on this Store returned) still holds its key.
	// Otherwise it returns an error matching ErrNotHeld and stores nothing,
	// so a completion never overwrites a newer owner.
	//
	// A record the Store cannot hold (larger than its backend allows) is
	// refused with an error matching [ErrRecordTooLarge] (and not
	// ErrNotHeld), and the lease keeps holding. Any other error is taken as
	// transient, its outcome unknown.
	Complete(ctx context.Context, lease Lease, record []byte, retention time.Duration) error
}

// ErrRecordTooLarge is matched by the error of [Store.Complete] for a record
// larger than the backend can hold; it also matches [ErrInvalidArgument].
// Every backend's own "too large" error wraps it.
var ErrRecordTooLarge = fmt.Errorf("%w: record too large for the store", ErrInvalidArgument)

// Pinger is an optional interface of a Locker that can check that its
// server is reachable and answering, for readiness probes. Every built-in
// backend implements it; [Ping] calls it.
type Pinger interface {
	// Ping makes one cheap request to the server (or for an in-process
	// backend, checks that it is not closed) and returns nil if it was
	// answered before ctx ended.
	Ping(ctx context.Context) error
}

// Ping checks l's server with [Pinger.Ping]. For a Locker that does not
// implement Pinger it returns an error matching [errors.ErrUnsupported].
func Ping(ctx context.Context, l Locker) error {
	if err := CheckContext(ctx); err != nil {
		return err
	}
	p, ok := l.(Pinger)
	if !ok {
		return fmt.Errorf("lock: %T cannot be pinged: %w", l, errors.ErrUnsupported)
	}
	return p.Ping(ctx)
}

// TTLLimits are the TTLs a backend's server honours. Zero fields mean no
// limit.
type TTLLimits struct {
	// Min is the shortest TTL the server honours as asked; a shorter one is
	// refused with an error matching [ErrInvalidTTL] (Consul's
	// session_ttl_min, 10 s by default) or lengthened by the server (etcd
	// grants at least about 2 s), as the backend documents.
	Min time.Duration
	// Max is the longest TTL the backend accepts (memcached: 30 days).
	Max time.Duration
	// Step is the granularity the server counts in; TTLs are rounded up to
	// a whole number of steps (a millisecond on Redis, a second on etcd,
	// Consul and memcached).
	Step time.Duration
}

// TTLLimiter is an optional interface of a Locker whose server bounds the
// TTLs it honours. Every built-in backend implements it, so that helpers
// such as the idempotency Guard can reject, at construction, a TTL that
// would fail every request later; [CheckTTL] uses it.
type TTLLimiter interface {
	TTLLimits() TTLLimits
}

// CheckTTL reports whether l can honour ttl: it must be positive and, when
// l is a [TTLLimiter], within its limits. The error matches
// [ErrInvalidTTL], is a [*TTLError], and says what to change.
func CheckTTL(l Locker, ttl time.Duration) error {
	if err := ValidateTTL(ttl); err != nil {
		return err
	}
	tl, ok := l.(TTLLimiter)
	if !ok {
		return nil
	}
	lim := tl.TTLLimits()
	switch {
	case lim.Min > 0 && ttl < lim.Min:
		return &TTLError{TTL: ttl, Reason: fmt.Sprintf("shorter than the %v this backend's server honours (%T); use at least %v or lower the server's minimum", lim.Min, l, lim.Min)}
	case lim.Max > 0 && ttl > lim.Max:
		return &TTLError{TTL: ttl, Reason: fmt.Sprintf("longer than the %v this backend accepts (%T)", lim.Max, l)}
	}
	return nil
}

// KeyInfo is what an operator sees of one key through [Admin.Inspect].
type KeyInfo struct {
	// Key is the key as it was passed to Inspect.
	Key string
	// Held reports whether a lease holds the key now; Token and Remaining
	// are that lease's fencing token and remaining time to live as the
	// server reports them (zero when unknown).
	Held      bool
	Token     uint64
	Remaining time.Duration
	// Record reports whether a completed idempotency record is stored under
	// the key; RecordSize is its length in bytes and RecordRemaining the
	// time until its retention ends (zero when unknown).
	Record          bool
	RecordSize      int
	RecordRemaining time.Duration
}

// Admin is an optional interface of a Locker for operators: look at one key
// and clear it by hand, with the backend's own escaping or hashing of keys
// done by the library, so that nobody has to build a backend's internal key
// names. Every built-in backend implements it. Keys are the keys the
// Locker's callers use; for idempotency keys, the idempotency package
// derives the stored key (see its docs).
type Admin interface {
	// Inspect reports the state of key.
	Inspect(ctx context.Context, key string) (KeyInfo, error)
	// ForceRelease deletes the lease that holds key, whoever holds it. The
	// holder's next Refresh, Release or Complete reports ErrNotHeld, and
	// fencing tokens keep increasing. It returns an error matching
	// ErrNotHeld if no lease held the key.
	ForceRelease(ctx context.Context, key string) error
	// DeleteRecord deletes the completed idempotency record stored under
	// key, so that the next Claim takes the key and the work runs again. It
	// returns an error matching ErrNotHeld if no record was stored.
	DeleteRecord(ctx context.Context, key string) error
}
