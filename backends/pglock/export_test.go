package pglock

// TakeLockID returns the advisory lock a take of key holds while it draws
// its token.
func TakeLockID(l *Locker, key string) (class, id int32) { return l.class, int32(hash64(key)) }

// Channel returns the NOTIFY channel of the Locker's table.
func Channel(l *Locker) string { return l.channel }

// Payload returns the NOTIFY payload of key.
func Payload(key string) string { return payload(hash64(key)) }
