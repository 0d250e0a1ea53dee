// Package optional holds what every backend's implementation of the
// contract's optional interfaces (lock.Pinger, lock.TTLLimiter, lock.Admin,
// idempotency.FingerprintClaimer) checks the same way, so that bad input
// gets the same typed error everywhere.
package optional

import (
	"context"
	"fmt"
	"time"

	"github.com/idemlock/lock"
)

// MaxFingerprint is the longest fingerprint ClaimFingerprint accepts.
const MaxFingerprint = 64

// CheckKey validates the arguments of an Admin call: a context that is not
// done and a valid key.
func CheckKey(ctx context.Context, key string) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	return lock.ValidateKey(key)
}

// CheckClaim validates the arguments of ClaimFingerprint: those of Claim,
// and a fingerprint of at most MaxFingerprint bytes (an error matching
// lock.ErrInvalidArgument names the backend).
func CheckClaim(backend string, ctx context.Context, key string, ttl time.Duration, fp []byte) error {
	if err := lock.CheckArgs(ctx, key, ttl); err != nil {
		return err
	}
	if len(fp) > MaxFingerprint {
		return fmt.Errorf("%w: %s: fingerprint of %d bytes, at most %d", lock.ErrInvalidArgument, backend, len(fp), MaxFingerprint)
	}
	return nil
}

// Clone copies b, keeping nil as nil (a holder without a fingerprint).
func Clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}
