// Package etcdlock is idemlock's etcd backend: locks kept as etcd keys bound
// to etcd leases, with the key's revision as fencing token and watches for
// waiting. It works with etcd 3.4 and later through go.etcd.io/etcd/client/v3.
//
//	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}})
//	...
//	locker, err := etcdlock.New(cli)
//	...
//	defer locker.Close() // before cli.Close(); the Locker never closes cli
//	err = lock.Do(ctx, locker, "invoice/42", func(ctx context.Context, lease lock.Lease) error { ... })
//
// # How a lock works
//
// A lock on key is the etcd key <prefix>l/<key> (prefix "idemlock/" unless
// [WithPrefix] says otherwise), bound to an etcd lease whose TTL is the
// lock's. Keys are stored as they are: etcd keys are arbitrary bytes, so
// every valid key (any UTF-8 up to lock.MaxKeyLen bytes, NUL and slashes
// included) is its own lock with no escaping or hashing. The value is the
// lease's granted TTL in decimal seconds.
//
//   - Take is one transaction: if the key's CreateRevision is 0 (no holder),
//     put it bound to the lease, else read the holder's key. The revision of
//     that put is the lease's fencing token: etcd revisions increase across
//     the whole cluster, so tokens grow across holders, keys and expiries,
//     and survive restarts (etcd is durable). They start again only if the
//     cluster's data is wiped.
//   - Release is one transaction guarded by the key's CreateRevision == token:
//     a stale or retried release never deletes a newer holder's key (the
//     flaw of concurrency.Mutex, which deletes by name).
//   - Refresh with the same TTL renews the holding's own etcd lease (etcd
//     answers "lease not found" once it expired, which becomes
//     lock.ErrNotHeld and so cancels lock.KeepAlive's context). No other
//     holding ever shares that lease, so a stale refresh extends nobody
//     else. Refresh with another TTL moves the key to a lease of that TTL in
//     a transaction guarded by the token.
//   - The lease is never kept alive behind the caller's back: a lock expires
//     after its TTL unless refreshed (lock.KeepAlive and lock.Do refresh).
//
// Leases are granted ahead of need: each Locker keeps a small pool of unused
// leases per TTL class (see [WithLeasePool]), refilled in the background and
// fed by releases, so a warm take is one request and take plus release two
// (concurrency.Mutex with a fresh session needs four: grant, take, delete,
// revoke, plus its session's keep-alive stream). Pooled leases are
// revoked at Close, or expire on their own. A take whose answer is lost
// (timeout, broken connection) revokes its lease in the background, which
// frees the key if the take did happen.
//
// # TTLs
//
// etcd counts lease TTLs in whole seconds and enforces a minimum of about
// 1.5 election timeouts (2 s with the default 1 s election timeout), so a
// lock lasts at least its TTL rounded up to whole seconds and to the server's
// minimum, and at most one [WithTTLSlack] (default 1 s) more than that: a
// pooled lease is handed out only while it still has the TTL to live, and it
// was granted with the slack on top. [lock.Deadliner] reports the lower
// bound, from when the lease's grant or renewal was sent. Expiry is counted
// by the etcd leader, relative to when it handled the request; it checks for
// expired leases twice a second, so a key disappears up to about half a
// second after its lease ran out. When a member becomes leader (after a
// leader change, or a restart of a single-member cluster) etcd restarts every
// lease's countdown from its full TTL (lease checkpointing, off by default,
// changes that), so a lock may then outlive its deadline; leases stay
// truthful (Refresh and Release report what etcd holds).
//
// # Waiting
//
// The Locker implements [lock.Notifier]: lock.Acquire subscribes, and each
// Wait watches the lock key for deletions from the revision after the one
// its failed attempt saw, so a release between the attempt and the watch is
// replayed from etcd's history. Releases and expiries both delete the key,
// so a waiter wakes within one watch event of either. A failed attempt's
// lock.NotAcquiredError carries that revision as Version and the holder's
// lease TTL as Remaining (an upper bound of its remaining life, read from
// the key's value at no extra cost). If the revision to watch from was
// compacted away, Wait returns so that the caller tries again from a newer
// one. All subscriptions of a Locker share one watch stream. Every waiter
// wakes on a release and makes one attempt, so N waiters cost N transactions
// per hand-off (etcd commits them together); waiters are not queued in
// arrival order as concurrency.Mutex queues them, unless [WithQueue].
//
// With [WithQueue] the Locker implements [lock.Queuer]: a waiter puts an
// entry key "<lock key>\xff<id>" bound to the Locker's own queue lease
// (5 s, kept alive while the Locker lives), ordered by CreateRevision as
// concurrency.Mutex orders its waiters; a ticket's take is the ordinary
// take transaction guarded by a range comparison that no entry is older
// than its own, and it deletes the entry. Waiters follow one shared watch
// per Locker and key (the lock key and its entries) and only the head, whose
// predecessor is gone, attempts when the key is deleted: a hand-off costs
// about three requests whatever the number of waiters. A waiter that gives
// up deletes its entry, which lets the next one go; a dead process's
// entries expire with its queue lease. The queued scripts' keys live under
// the lock key, so the same key permissions cover them.
//
// # Partitions and failures
//
// A holder cut off from etcd keeps running until lock.KeepAlive's context
// is cancelled at the lease's local deadline (the TTL from before the last
// successful renewal was sent); etcd expires the lease on its side and lets
// another process take the key. The cut-off holder may be paused past that
// deadline, so a resource that must never see two holders should check the
// fencing token. The client retries requests on other endpoints as
// clientv3 does; a request whose outcome is unknown returns an error that is
// not lock.ErrNotHeld (KeepAlive retries those until the deadline).
//
// # Unknown outcomes and concurrent calls
//
// Calls on one lease are serialised, so concurrent Refresh, Release and
// Complete never interleave. A Release or Complete whose reply was lost
// (or whose context ended in flight) may have deleted the lock key while
// the holding's etcd lease lives on, so renewing that lease would prove
// nothing: the next Refresh then moves the key to a fresh lease in a
// transaction guarded by its creation revision, which reports
// lock.ErrNotHeld if the key is gone or another holder's (and so ends
// lock.KeepAlive's context). A Release retried after one whose reply was
// lost returns lock.ErrNotHeld if the first one did delete the key: etcd
// keeps no trace of it; the retry never touches a newer holder's key. A
// Complete retried the same way reports success if the first one stored the
// record (see [Locker.Complete]).
//
// # Idempotency records
//
// The Locker is also an idempotency.Store. Claim is one transaction that
// takes the lock key only if neither it nor the record key <prefix>r/<key>
// exists, and otherwise reads both. Complete is one transaction, guarded by
// the lock's token, that deletes the lock key and puts the record bound to a
// retention lease; retention leases are shared by all records completed in
// the same bucket of time (see [WithRetentionBucket]), so a record expires
// server-side between its retention and its retention plus the bucket.
// Records are limited to [DefaultMaxRecordSize] (1 MiB, under etcd's default
// 1.5 MiB request limit; see [WithMaxRecordSize]); larger ones get
// [lock.ErrRecordTooLarge].
//
// # Health, limits, administration and loss detection
//
// *Locker implements the contract's optional interfaces: [Locker.Ping]
// (one linearizable read, so it fails without a quorum; lock.Open does not
// wait for a connection, so it succeeds for a cluster that is down),
// [Locker.TTLLimits] (whole seconds, at least etcd's minimum lease of 2 s
// less the TTL slack), lock.Admin ([Locker.Inspect], [Locker.ForceRelease],
// [Locker.DeleteRecord], taking the caller's key) and
// idempotency.FingerprintClaimer ([Locker.ClaimFingerprint]: the
// fingerprint is kept in the lock key's value).
//
// A lease is a lock.LossNotifier: lock.KeepAlive watches its key, so a
// holder learns that its key was deleted (by hand, by ForceRelease, or by
// etcd at expiry) within one watch event, not at its next refresh.
//
// # URL
//
// Importing the package registers the "etcd" scheme with lock.Open:
//
//	etcd://host:port[,host:port...][/][?option=value&...]
//
// (an IPv6 literal, in brackets, only as the sole endpoint: Go's URL parser
// refuses it in a list). Options: prefix (string, default idemlock/), dial_timeout (duration,
// default 5s), lease_pool (count, default 8), ttl_slack (duration, default
// 1s), timeout (duration, default 5s), max_record_size (bytes, default
// 1048576), retention_bucket (duration), queue (true for [WithQueue]). The Locker owns the client Open made
// and closes it. Open returns an error if its context has already ended,
// and otherwise neither waits for a connection nor keeps the context: it
// does not matter after Open returns. Credentials and TLS are not supported in the URL (they are
// untested against a real server here); build a clientv3.Client with them and
// call [New].
package etcdlock
