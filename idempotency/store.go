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
type Store = lock.Store

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
