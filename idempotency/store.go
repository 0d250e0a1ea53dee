package idempotency

import (
	"context"
	"time"

	"github.com/idemlock/lock"
)

// Store keeps the state of idempotency keys: a lease while the first request
// for a key is in progress, then the completed record that duplicates replay.
// Every built-in backend's Locker value is a Store: memlock.New() and each
// networked backend's New(client) can be passed to [New] directly. A Locker
// without these methods does not compile as a Store.
//
// Keys reach a Store already hashed (see [Guard]); a Store never sees the raw
// idempotency key. Keys used with Claim are not meant to be used with
// TryAcquire as well.
type Store interface {
	lock.Locker
	// Claim makes one attempt on key. If a completed record is stored under
	// key it returns that record and a nil Lease. Otherwise it tries to take
	// key for ttl exactly as TryAcquire does: an error matching
	// lock.ErrNotAcquired while another claim is in progress, else the new
	// Lease and a nil record. Looking for the record and taking the lease are
	// one atomic step: a record stored by Complete is never missed by a Claim
	// that then takes the key.
	Claim(ctx context.Context, key string, ttl time.Duration) (lock.Lease, []byte, error)
	// Complete stores record under the key of lease, to be returned by Claim
	// for retention, and ends the lease, in one atomic step — provided the
	// lease (which Claim on this Store returned) still holds its key.
	// Otherwise it returns an error matching lock.ErrNotHeld and stores
	// nothing, so a completion never overwrites a newer owner.
	//
	// A record the Store cannot hold (larger than its backend allows) is
	// refused with an error matching [ErrRecordTooLarge] (and not
	// lock.ErrNotHeld), and the lease keeps holding: the Guard then
	// completes with a small tombstone instead, so that work that was done
	// is never run again. Any other error is taken as transient, its
	// outcome unknown: the Guard retries the Complete within its store
	// timeout.
	Complete(ctx context.Context, lease lock.Lease, record []byte, retention time.Duration) error
}

// FingerprintClaimer is an optional interface of a [Store] that keeps a
// request fingerprint with the in-progress lease, so that a duplicate
// with a different request is told apart while the first is still in
// flight: the middleware answers it 422 [ProblemKeyReused] (and [Do]
// returns [ErrKeyReused]) at once, instead of 409 and a 422 only after
// the first completes. The Guard discovers it by type assertion and then
// claims with it instead of Claim; a Store without it keeps the 409.
type FingerprintClaimer interface {
	// ClaimFingerprint is [Store.Claim] that also stores fp (an opaque
	// value of at most 64 bytes) with the lease it takes, in the same
	// atomic step. When another claim holds the key it returns an error
	// matching lock.ErrNotAcquired, as Claim does, and that claim's fp as
	// holder (nil if the holder claimed without one). Otherwise holder is
	// nil.
	ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (lease lock.Lease, record, holder []byte, err error)
}
