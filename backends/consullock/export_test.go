package consullock

// EscapeKey exposes the key escaping to the tests.
var EscapeKey = escapeKey

// EntryTaken is the Flags of a queue entry whose ticket took the key.
const EntryTaken = entryTaken
