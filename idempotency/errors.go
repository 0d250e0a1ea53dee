package idempotency

import (
	"errors"
	"fmt"
	"time"
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
// failed with a [Permanent] error: the error's text, as stored.
type StoredError struct {
	Message string
}

func (e *StoredError) Error() string { return e.Message }

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

func storeError(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrStore, op, err)
}
