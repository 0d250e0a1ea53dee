package idempotency

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemlock/lock"
)

var (
	// ErrInProgress is matched by the error of [Do] when another call holds
	// the key right now; the error is an [*InProgressError].
	ErrInProgress = errors.New("idempotency: key in progress")
	// ErrKeyReused is matched by the error of [Do] when the key completed
	// with a different payload (see [WithPayload]).
	ErrKeyReused = errors.New("idempotency: key reused with a different request")
	// ErrNotReplayable is matched by the error of [Do] when the key completed
	// but its result could not be stored; the error is a
	// [*NotReplayableError].
	ErrNotReplayable = errors.New("idempotency: key completed but its result was not stored")
	// ErrStore is matched by errors the Store returned, other than "in
	// progress" (for example a connection failure).
	ErrStore = errors.New("idempotency: store unavailable")
	// ErrRecordTooLarge is the one error every [Store] wraps when it
	// refuses a record for its size (larger than a memcached item, a
	// Consul transaction, a configured limit); it also matches
	// lock.ErrInvalidArgument. The Guard turns only this refusal into a
	// tombstone; any other Complete error is retried within the store
	// timeout. Each built-in backend's own "too large" error wraps it.
	ErrRecordTooLarge = lock.ErrRecordTooLarge
)

// InProgressError is returned to a duplicate while the first call for its
// key is still running. A queue consumer turns it into a delayed retry
// (nack with a delay of RetryAfter) rather than an ack.
type InProgressError struct {
	RetryAfter time.Duration
}

func (e *InProgressError) Error() string {
	return fmt.Sprintf("idempotency: key in progress in another call; retry after %v", e.RetryAfter)
}

// Unwrap makes errors.Is(err, ErrInProgress) true.
func (e *InProgressError) Unwrap() error { return ErrInProgress }

// NotReplayableError is returned by [Do] for a key whose first call
// completed but whose result could not be stored (it did not encode).
type NotReplayableError struct {
	Reason TombstoneReason
}

func (e *NotReplayableError) Error() string {
	return "idempotency: key completed but its result is not replayable: " + e.Reason.String()
}

// Unwrap makes errors.Is(err, ErrNotReplayable) true.
func (e *NotReplayableError) Unwrap() error { return ErrNotReplayable }

// StoredError is what [Do] returns to duplicates of a call whose function
// failed with a [Permanent] error: the error's text, as stored, and the
// texts of the errors it wrapped.
//
// errors.Is(err, target) on a StoredError is true when target's text is
// the text of the stored error or of any error in its chain (what
// errors.Unwrap and Unwrap() []error reach), so a duplicate matches the
// same sentinel errors (errors.New values such as ErrCardDeclined) as the
// first call did. Sentinels are matched by their text, which is all a
// record can carry across processes: two sentinels with one text are one
// to a replay. errors.As cannot recover the original types.
type StoredError struct {
	Message string
	chain   []string // texts of the stored error and everything it wraps
}

func (e *StoredError) Error() string { return e.Message }

// Is reports whether target's text is that of the stored error or of an
// error it wrapped.
func (e *StoredError) Is(target error) bool {
	if target == nil {
		return false
	}
	t := target.Error()
	if t == e.Message {
		return true
	}
	for _, c := range e.chain {
		if c == t {
			return true
		}
	}
	return false
}

// errorChain returns the texts of err and of every error it wraps, each
// once, at most maxChain of them, in depth-first order.
func errorChain(err error) []string {
	var out []string
	seen := map[string]bool{}
	var walk func(error)
	walk = func(err error) {
		if err == nil || len(out) >= maxChain {
			return
		}
		if t := err.Error(); !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

// maxChain bounds the error texts a stored error keeps.
const maxChain = 32

// LeaseLostError is returned by [Do], joined with fn's own error, when fn
// ran but its result could not be stored because the key's lease was no
// longer held: another call may have run fn too, and nothing of this call
// was stored over the newer owner's. It matches lock.ErrLeaseLost and
// lock.ErrNotHeld, and Cause says why the lease was lost as far as this
// process knows.
type LeaseLostError struct {
	Key string
	// Cause is the keep-alive's loss cause (a refresh reported the lease
	// not held, the backend signalled the loss, or no refresh succeeded
	// before the lease's local deadline), or, when the keep-alive saw
	// nothing, the Store's refusal of the completion.
	Cause error
}

func (e *LeaseLostError) Error() string {
	return fmt.Sprintf("idempotency: the lease of key %q was lost before the result was stored (another call may have run too): %v", e.Key, e.Cause)
}

// Unwrap makes errors.Is match lock.ErrLeaseLost, lock.ErrNotHeld and
// whatever Cause matches.
func (e *LeaseLostError) Unwrap() []error {
	return []error{lock.ErrLeaseLost, lock.ErrNotHeld, e.Cause}
}

// permanentError marks an error [Do] stores instead of releasing the key.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks an error of a [Do] function as the final outcome for its
// key: it is stored like a result, and every duplicate gets a
// [*StoredError] with its text instead of running the function again (a
// message that can never be processed, a payment that was declined). Any
// other error releases the key so that a retry runs the function again.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// StoreError is the error of a call to the Store that failed or did not
// answer within the Guard's store timeout ([WithStoreTimeout]). It matches
// [ErrStore] and whatever Err matches (context.DeadlineExceeded for a
// timeout).
type StoreError struct {
	// Call names the Store call: "claim", "wait" (a duplicate waiting for
	// the first request, see [WithWait]), "complete" or "release".
	Call string
	// Timeout is the store timeout when the call did not answer within it,
	// and zero when the Store answered with an error.
	Timeout time.Duration
	// Err is what the Store or the context returned.
	Err error
}

func (e *StoreError) Error() string {
	if e.Timeout > 0 {
		return fmt.Sprintf("idempotency: store unavailable: %s did not answer within the store timeout of %v: %v", e.Call, e.Timeout, e.Err)
	}
	return fmt.Sprintf("idempotency: store unavailable: %s: %v", e.Call, e.Err)
}

// Unwrap makes errors.Is match ErrStore and what Err matches.
func (e *StoreError) Unwrap() []error { return []error{ErrStore, e.Err} }

// storeError wraps err from the Store call named call, made with cctx,
// which a parent context and the store timeout bound: a timeout is told
// apart from the Store's own failure and from the parent's end.
func storeError(call string, err error, cctx, parent context.Context, timeout time.Duration) error {
	se := &StoreError{Call: call, Err: err}
	if timedOut(cctx, parent) {
		se.Timeout = timeout
	}
	return se
}

// timedOut reports whether a store call's context ended by the store
// timeout, not with its parent.
func timedOut(cctx, parent context.Context) bool {
	return cctx != nil && errors.Is(cctx.Err(), context.DeadlineExceeded) && parent.Err() == nil
}
