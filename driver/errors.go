package driver

import (
	"fmt"

	"github.com/idemlock/lock"
)

// Name is a backend's name as its errors show it ("redislock"). Its
// methods make the backend's errors, so that every backend reports the
// same things in the same shape. A backend declares it once:
//
//	const errs = driver.Name("redislock")
type Name string

// MaxDisplayKey is the longest key, in bytes, that an error message shows
// whole; [DisplayKey] cuts longer ones.
const MaxDisplayKey = 64

// DisplayKey shortens key for an error message: at most [MaxDisplayKey]
// bytes, then "…".
func DisplayKey(key string) string {
	if len(key) <= MaxDisplayKey {
		return key
	}
	return key[:MaxDisplayKey] + "…"
}

// Error is an error of one operation of a backend on one key: the error
// of every [Name] method but URLError and InvalidArgument. Its message is
// "<backend>: <op> \"<key>\": <err>[: <detail>]", with the key shortened
// by [DisplayKey] (and left out when empty).
type Error struct {
	Backend Name   // the backend's name
	Op      string // the operation: "take", "refresh", "release", "complete", …
	Key     string // the caller's key, whole; empty for an operation on no key
	Err     error  // the cause: a server's or client's error, or a sentinel of package lock
	Detail  string // more on why, or empty
}

func (e *Error) Error() string {
	s := string(e.Backend) + ": " + e.Op
	if e.Key != "" {
		s += fmt.Sprintf(" %q", DisplayKey(e.Key))
	}
	s += ": " + e.Err.Error()
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Unwrap returns Err, so that errors.Is and errors.As see the cause.
func (e *Error) Unwrap() error { return e.Err }

// OpError wraps err, an error of the server or the client during op on
// key. Use it for an outcome the backend does not know (a timeout, a lost
// connection): the result matches what err matches and nothing more.
func (n Name) OpError(op, key string, err error) error {
	return &Error{Backend: n, Op: op, Key: key, Err: err}
}

// NotHeld is the error of op on a lease of key that no longer holds its
// lock; it matches [lock.ErrNotHeld].
func (n Name) NotHeld(op, key string) error {
	return &Error{Backend: n, Op: op, Key: key, Err: lock.ErrNotHeld}
}

// NotHeldWhy is [Name.NotHeld] with the reason the backend found.
func (n Name) NotHeldWhy(op, key, why string) error {
	return &Error{Backend: n, Op: op, Key: key, Err: lock.ErrNotHeld, Detail: why}
}

// Found is the error of an operator's request on key (ForceRelease,
// DeleteRecord; op names it) from its outcome: [Name.OpError] of err when
// err is not nil, [Name.NotHeld] when the request found nothing to delete,
// and nil when it deleted something.
func (n Name) Found(op, key string, found bool, err error) error {
	switch {
	case err != nil:
		return n.OpError(op, key, err)
	case !found:
		return n.NotHeld(op, key)
	}
	return nil
}

// Closed is the error of op (on key, which may be empty) on a closed
// Locker; it matches [lock.ErrClosed].
func (n Name) Closed(op, key string) error {
	return &Error{Backend: n, Op: op, Key: key, Err: lock.ErrClosed}
}

// RecordTooLarge is the error of Complete on key for a record of size
// bytes when the backend holds at most max; it matches
// [lock.ErrRecordTooLarge] and so [lock.ErrInvalidArgument].
func (n Name) RecordTooLarge(key string, size, max int) error {
	return &Error{Backend: n, Op: "complete", Key: key, Err: lock.ErrRecordTooLarge,
		Detail: fmt.Sprintf("%d bytes, over the limit of %d", size, max)}
}

// InvalidArgument is the error of a bad argument or option, described by
// format and args as by fmt.Errorf (%w works); it matches
// [lock.ErrInvalidArgument] and reads "<backend>: <description>".
func (n Name) InvalidArgument(format string, args ...any) error {
	return n.sentinel(lock.ErrInvalidArgument, format, args)
}

// URLError is the error of a URL the backend's opener rejects, described
// by format and args as by fmt.Errorf (%w works); it matches
// [lock.ErrInvalidURL] and reads "<backend>: <description>". The
// description must not show a password: use url.URL.Redacted.
func (n Name) URLError(format string, args ...any) error {
	return n.sentinel(lock.ErrInvalidURL, format, args)
}

func (n Name) sentinel(s error, format string, args []any) error {
	cause := fmt.Errorf(format, args...)
	return &sentinelError{msg: string(n) + ": " + cause.Error(), errs: []error{s, cause}}
}

// sentinelError matches its sentinel and whatever its description wrapped.
type sentinelError struct {
	msg  string
	errs []error
}

func (e *sentinelError) Error() string   { return e.msg }
func (e *sentinelError) Unwrap() []error { return e.errs }
