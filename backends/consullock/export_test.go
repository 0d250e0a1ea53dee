package consullock

import "time"

// EscapeKey exposes the key escaping to the tests.
var EscapeKey = escapeKey

// EntryTaken is the Flags of a queue entry whose ticket took the key.
const EntryTaken = entryTaken

// MaxAge exposes to the tests how long after its last renewal a pooled
// session may still be handed to a take.
var MaxAge = maxAge

// TrimAfter exposes to the tests how long idle sessions beyond the spares
// may go unused before the keeper destroys them.
var TrimAfter = trimAfter

// RetentionWidth exposes to the tests how long after its create the
// retention session of retention is shared by the records completed.
func RetentionWidth(l *Locker, retention time.Duration) time.Duration {
	_, width, _ := l.retentionTTL(retention)
	return width
}
