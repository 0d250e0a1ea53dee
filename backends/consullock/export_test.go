package consullock

// EscapeKey exposes the key escaping to the tests.
var EscapeKey = escapeKey
