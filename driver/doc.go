// Package driver is the toolkit for writing an idemlock backend, in the
// spirit of database/sql/driver: the scaffolding every backend needs around
// its server's own take, refresh, release, claim, complete and notify,
// written once. The built-in backends (memlock, kvlock, redislock,
// memcachedlock, etcdlock, consullock, pglock) use it, and so can a custom
// backend; its users never need it.
//
// What it provides:
//
//   - [Name], a backend's name, whose methods make every error a backend
//     returns in one shape: [Name.OpError] ("redislock: take \"k\": …", the
//     key shortened by [DisplayKey]), [Name.NotHeld], [Name.Found] (for ForceRelease and DeleteRecord),
//     [Name.Closed],
//     [Name.RecordTooLarge], [Name.InvalidArgument] and [Name.URLError],
//     each matching the contract's sentinel error ([lock.ErrNotHeld],
//     [lock.ErrClosed], [lock.ErrRecordTooLarge], [lock.ErrInvalidArgument],
//     [lock.ErrInvalidURL]) with errors.Is, and a [*Error] with errors.As.
//   - [Gate], embedded in a Locker: the closed flag and a Close that runs
//     once, the argument checks every call starts with ([Gate.Check] and
//     friends), and [Own], which turns the lock.Lease a caller passes back
//     (to Complete) into the backend's own lease type, refusing a lease of
//     another Locker.
//   - [Lease], embedded in a backend's lease: key, fencing token, the state
//     (held, releasing, released, lost) with transitions safe under
//     concurrent calls, the local monotonic deadline behind
//     [lock.Deadliner], and [Lease.End], which runs a Release or Complete so
//     that a second one waits for the first one's outcome.
//   - [Apply], which applies a backend's options and reports every invalid
//     one at construction, so that New returns (*Locker, error) and no call
//     has to check a stored configuration error.
//   - [Query], which reads a URL's options with typed errors and rejects
//     unknown ones, for a backend's lock.Opener.
//   - [FullBackend], the optional interfaces every built-in backend
//     implements, to assert in one line.
//
// A backend built on the toolkit passes the conformance suite
// (conformance.Run) like any other; the package example is a complete toy
// backend that does.
package driver
