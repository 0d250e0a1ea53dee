// Package consullock is idemlock's Consul backend: locks held by Consul
// sessions on KV keys, on the github.com/hashicorp/consul/api client.
//
// # How a lock works
//
// A lease is a KV key acquired (Consul's "lock" operation) by a session of
// its own: TTL = the lease's TTL, behavior "delete" (when the session ends,
// the server deletes the key), no health checks (only the TTL decides), and
// lock-delay 0 unless [WithLockDelay] asks for one.
//
//   - Take: one request, a transaction (PUT /v1/txn) whose "lock" operation
//     answers with the key's ModifyIndex. Sessions come ready-made from a
//     per-TTL pool that a background goroutine keeps fresh, so creating a
//     session is off the critical path once a Locker is warm.
//   - Release: one request, a transaction that checks that the lease's
//     session still holds the key and deletes it only at the lease's own
//     ModifyIndex (check-session + delete-cas). The session goes back to the
//     pool for the next take. An uncontended take + release is 2 round trips
//     (Consul's own api.Lock recipe makes 5 on its path, about 7 in all).
//   - Refresh to the same TTL renews the session (one request; a session the
//     server no longer knows means [lock.ErrNotHeld]). A session's TTL cannot
//     change, so Refresh to another TTL moves the lock to a session with that
//     TTL in one owner-checked transaction (unlock by the old session + lock
//     by the new one).
//   - A stale lease never frees or extends a newer holder: every write is
//     checked by the server against the lease's own session and index.
//
// # Fencing tokens
//
// [lock.Lease.Token] is the key's ModifyIndex after the take: the index of
// the Raft log entry that took it. Raft indexes grow across all keys and
// never repeat, so tokens strictly increase across holders, also after a key
// was released or deleted by an expiring session. Caveat: a Consul dev agent
// (-dev) keeps no state and starts its indexes again after a restart; a
// real server keeps them in its Raft log and snapshots.
//
// # TTLs
//
// Session TTLs are counted by the Consul leader. TTLs are rounded up to
// whole seconds (the TTL step). The shortest is the agent's
// session_ttl_min, 10 s unless the agent lowers it; tell the Locker with
// [WithMinTTL] (default [DefaultMinTTL]). The longest is 24 h ([MaxTTL]).
// A TTL outside those bounds is a [*lock.TTLError] (errors.Is
// [lock.ErrInvalidTTL]), never silently changed; if the agent's real
// minimum is higher than the Locker was told, the server's refusal becomes
// the same error.
//
// Consul guarantees that a session lives at least its TTL after its last
// renewal and invalidates it lazily: the leader arms its timer with twice
// the TTL, so a lease that is not refreshed is freed between 1× and about
// 2× its TTL after its take or refresh (later still across a leader
// change). [lock.Deadliner.Deadline] reports the guaranteed lower bound:
// the time the session was created or last renewed, by the local monotonic
// clock before the request was sent, plus the TTL. A pooled session is
// handed to a take only while it was renewed less than an eighth of the TTL
// ago (at most 500 ms), so a lease holds at least its TTL minus that.
//
// One server fault breaks that bound: a Consul server that stands still
// (SIGSTOP, a VM frozen) for longer than a session's TTL runs, when it
// resumes, the session timers that fell due meanwhile at the same time as
// the renewals and takes it accepted on resume, and Consul does not order
// them: a session renewed at that moment can still be invalidated just
// after, so a lease taken or refreshed then is lost well before its TTL
// (the torture harness measured it, RELIABILITY.md). The lease's loss
// watcher cancels lock.KeepAlive's context when the key goes; fencing
// tokens keep increasing, so a fenced resource is safe.
//
// # Waiting
//
// *Locker implements [lock.Notifier]: [lock.Acquire] waits with Consul
// blocking queries (GET /v1/kv/<key>?index=N) on the lock's key, from the
// ModifyIndex that the failed attempt saw ([lock.NotAcquiredError.Version]),
// so a release (or a session expiry, which deletes the key) after the
// attempt is never missed, and a waiter wakes within one blocking-query
// return of it. Cancelling the context aborts the HTTP request at once.
// A refused take makes one read besides the transaction, to learn that
// index and the holder's TTL ([lock.NotAcquiredError.Remaining]). With
// lock-delay, a key can be free and still refused; the end of a
// lock-delay sends no event, so Acquire then retries at its polling cap
// (250 ms by default) until it ends.
//
// Leases implement [lock.LossNotifier]: the first call to Lost starts one
// blocking query on the key, which closes the channel when the key is
// deleted or held by another session; it is stopped by Release and by
// [Locker.Close].
//
// # Queued waiting ([WithQueue])
//
// Unqueued, every waiter holds a blocking query of its own (one HTTP
// connection: an agent refuses more than http_max_conns_per_client, 200 by
// default, from one address, with 429) and wakes on every release, then
// sends a take: N waiters cost about N+2 requests per hand-off. With
// [WithQueue] the Locker implements [lock.Queuer], in the manner of etcd's
// concurrency.Mutex. A waiter locks an entry key
// <prefix>queue/<escaped key>/<id> with the Locker's queue session (one
// per Locker: behavior delete, TTL the larger of 3 s and [WithMinTTL],
// renewed every third of it, destroyed by [Locker.Close]); the entry's
// CreateIndex is its place, and no entry can be created ahead of an
// existing one. The first queueing of a Locker on a key reads the queue
// and the lock key in the same transaction; a later one (another goroutine
// of the Locker already waits) only locks its entry. A ticket's take is one
// transaction: check that its entry is still held by the queue session,
// lock the lock key with a pooled session (the ordinary take: fencing,
// owner checks, expiry and release are unchanged; the lock key's Flags
// record the taker's place), mark the entry taken (its Flags, and the
// lock's value). It is sent only when the Locker saw the ticket at the
// head with the key free; otherwise a queued ticket's TryAcquire is
// refused without a request. The lease's release (or completion) deletes
// the marked entry with the lock key; a lease that ended otherwise leaves
// it to the next take behind it, which deletes it.
//
// The tickets of a Locker on a key share one blocking query: on the entry
// just ahead of the Locker's earliest ticket, or on the lock key when that
// ticket is the head. A release wakes only the head's Locker, whose head
// takes; the take marks its entry, which wakes the one Locker whose
// earliest ticket was behind it and tells it, in that query's answer, that
// its ticket is now the head and at which index the key was taken, so
// that it follows the lock key from there (a predecessor that left without
// taking makes it read the whole queue, one request whose answer grows
// with the queue, as does a Locker's ticket that queued behind another of
// the same Locker after the Locker last read the queue, when it becomes
// that Locker's earliest: per hand-off, about one read divided by the
// number of tickets each Locker has on the key). A hand-off costs about 5 requests whatever the number of waiters: the
// release, the head's take, the two blocking queries of the next head's
// Locker (woken by the take's mark, then by the release), and the queueing
// of one new waiter; plus the sessions' renewals, which go by time, not by
// hand-off. Five is the floor here: Consul has no range comparison nor
// ordered range read, so a waiter cannot learn that it is the head and
// that the key is free from one write, and it must learn of the take to
// follow the lock key (whose deletion by session expiry is the only sign
// of a holder lost without a release). A Locker keeps at
// most one blocking query per key and queueConcurrency (4) queueing or
// leaving requests in flight, so 512 waiters in 8 processes stay far below
// http_max_conns_per_client without raising it.
//
// A ticket that leaves (its context ended: [lock.Ticket] Close) deletes its
// entry, which wakes the Locker behind it, so a head that was woken and
// gave up never strands the queue. If that request fails (its outcome is
// unknown), the Locker abandons its queue session (destroyed in the
// background, else expiring): a leftover entry never blocks the queue, and
// the Locker's other waiters queue again at the back. A waiter whose
// process dies leaves the queue with its queue session, at most twice the
// session's TTL after its last renewal (6 s with a 1 s session_ttl_min, 20
// s with Consul's default 10 s): the grace a dead waiter adds to the
// holder's TTL. While the key is free and a waiter is ahead,
// [lock.NotAcquiredError.Remaining] is that grace plus a second. An
// uncontended Acquire on a queued Locker costs one request more (the
// queueing, before the take), and TryAcquire never looks at the queue: it
// may take a free key between two hand-offs, and the head then waits on.
// Queued and unqueued Lockers may share keys. The queue's keys are under
// the prefix, so the same ACL covers them.
//
// # Consistency
//
// Writes (take, release, refresh moves, Claim, Complete) are transactions
// that go through Raft. The lost-lease watch, whose verdict destroys a
// session, reads in consistent mode, and its blocking queries never wait
// from an index below the lease's own latest write, so it never acts on a
// view older than that write (a leader just elected may serve one in the
// default mode). Other reads (the holder's index after a refused take,
// waiting, reading a record) use Consul's default consistency mode: served
// by the leader, which can be stale only briefly around a leader change; a
// stale read there can cause a spurious wake-up or another attempt, never a
// wrong lock.
//
// # Unknown outcomes and concurrent calls
//
// Refresh, Release and Complete on one lease are serialised. After a write
// whose reply was lost (or whose context ended in flight) the lease is
// suspect: the next Refresh first checks, in one transaction, that its
// session still holds the key at its index, and reports lock.ErrNotHeld
// otherwise. A Release retried after one whose reply was lost returns
// lock.ErrNotHeld if the first one did delete the key: Consul keeps no trace
// of it; the retry never touches a newer holder's key.
//
// # Lock-delay
//
// Consul's lock-delay blocks the keys of an invalidated session from being
// locked again for a while (15 s by default in Consul). It is a safety net
// for holders that do not check fencing tokens: a holder that lost its
// session gets time to notice and stop before another takes over. It also
// delays every takeover after an expiry by that long. idemlock uses fencing
// tokens and lost-lease cancellation instead, so the default here is 0;
// [WithLockDelay] sets it (up to 60 s).
//
// # Keys
//
// A lock's Consul key is <prefix>lock/<escaped key> and an idempotency
// record's is <prefix>record/<escaped key> (prefix [DefaultPrefix] unless
// [WithPrefix]). The escaping keeps ASCII letters, digits, '-' and '_'
// and writes every other byte as '~' and two upper-case hex digits ("a/b c"
// becomes "a~2Fb~20c"). It is injective, so two keys never share a lock,
// and its output has no slashes, dots or control characters, so any valid
// key (NUL, "..", spaces, 1 KiB of UTF-8) survives the URL paths that
// Consul's KV endpoint and blocking queries use. An escaped key is at most
// 3 × [lock.MaxKeyLen] bytes.
//
// # Sessions
//
// Each lease holds one session; a released lease's session is kept for the
// next take of the same TTL (up to 8 idle per TTL) and renewed in the
// background while it waits, for as long as that TTL was used within the
// last [WithKeepWarm] period (default 10 s); then the idle sessions are
// destroyed. Idle sessions beyond one spare that no take needed for four
// renewal periods (1 s for TTLs of 4 s and up) are destroyed too, so that a
// burst of concurrent takes does not leave sessions renewed four times a
// second for nothing. [Locker.Close] destroys every idle session. A session whose
// lease was lost, or whose fate is unknown after a failed request, is
// destroyed and never reused; so is an idle session that went a whole TTL
// without a renewal (the agent stalled or unreachable): Consul may
// invalidate it at any moment from then on, even just after renewing it. Sessions are named by [WithSessionName]
// (default [DefaultSessionName]), which tells them apart in the agent's
// session list. Sessions are created on a goroutine of the Locker's with a
// context of their own: a take whose context ends while its session is
// being created returns at once, and the session joins the pool when it
// arrives (Close waits for it), so no session is left that the Locker does
// not know.
//
// # Idempotency records
//
// *Locker is an idempotency.Store. Claim is one transaction: check that no
// record exists + lock the key (a second request reads the record when
// there is one). Complete is one transaction: check that the lease's
// session holds the key at its index, delete the lock, write the record.
// Consul KV has no TTL, so a record is locked by a "retention session"
// (behavior delete, no checks, never renewed): when that session expires,
// the server deletes the record. Records of one retention share a session
// for a bucket of an eighth of the retention in whole seconds, at most 1 h
// (under 8 s a record gets a session of its own), whose TTL is the
// retention plus that width, capped at Consul's 24 h. By Consul's session
// contract a record is therefore kept at least its retention (rounded up
// to whole seconds and to the minimum TTL), or 23 h for retentions above
// 23 h; since Consul invalidates sessions at about twice their TTL, records
// typically stay about twice as long. A retention above 24 h is a
// [*lock.TTLError]. Retention sessions outlive the Locker on purpose
// (destroying one would delete its records) and expire on their own.
// A record is at most [DefaultMaxRecordSize] bytes unless
// [WithMaxRecordSize] says otherwise: it travels base64-encoded in a
// transaction that Consul caps at txn_max_req_len (512 KiB by default);
// larger records get an error matching [lock.ErrRecordTooLarge] before any
// request.
//
// # ACLs
//
// The Locker uses the client's token. It needs key write on the prefix
// (key_prefix "idemlock/" { policy = "write" }) and session write on the
// agent's node (session_prefix "" { policy = "write" }); a refusal, or an
// unknown token, is an error matching [ErrPermissionDenied]. An agent
// without ACLs ignores tokens.
//
// # URL
//
// lock.Open accepts consul://[:TOKEN@]HOST:PORT/?option=value&…. With no
// host, the api package's defaults and environment apply (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT, …). The ACL token may
// be given in the password position of the user info (consul://:TOKEN@host
// — url.Redacted hides it), as a token=… or token_file=… option, or through
// CONSUL_HTTP_TOKEN; the opener overwrites a token in the URL with
// "redacted" before returning so that no error message can show it.
// Options: dc (datacenter), tls=true (https), prefix, min_ttl, lock_delay,
// keep_warm (durations such as 1s), session_name, max_record_size (bytes),
// queue (true for [WithQueue]).
// The Locker that Open returns owns its client and closes its idle
// connections on Close. Open makes no request and keeps no reference to
// its context: the context does not matter after Open returns.
// [ParseURL] gives the client configuration and options of a URL, for a
// program that builds its own client.
//
// # Health, limits and administration
//
// *Locker implements the contract's optional interfaces: [Locker.Ping] (GET
// /v1/status/leader, for readiness probes: Open succeeds for an agent that
// is down), [Locker.TTLLimits] (whole seconds, from the minimum the Locker
// was told with [WithMinTTL] or min_ttl to 24 h), lock.Admin
// ([Locker.Inspect], [Locker.ForceRelease], [Locker.DeleteRecord], taking
// the caller's key and escaping it as the leases do) and
// idempotency.FingerprintClaimer ([Locker.ClaimFingerprint]: the
// fingerprint is kept in the lock key's value). A lease's Lost channel
// closes within one blocking-query return of its key's deletion (by hand,
// by ForceRelease or by session expiry), so lock.KeepAlive learns of it
// then, not at its next refresh.
package consullock
