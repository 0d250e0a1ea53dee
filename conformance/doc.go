// Package conformance is the behavioural specification of idemlock's
// contract, as a test suite any backend can run against its real server,
// and a guide for writing a backend that passes it.
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, conformance.Config{
//			NewLocker:      func(t *testing.T) lock.Locker { return newLocker(t) },
//			TTLGranularity: time.Millisecond,
//		})
//	}
//
// Subtests have stable names in a fixed order, so -run and -skip select
// clauses; new clauses are added at the end. Every failure message starts
// with "contract clause violated:", names the clause, and ends with a line
// "likely cause:" naming the mistake that most often breaks it. Only
// optional capabilities ([lock.Notifier], [Config.NewFaultyLocker]) are
// skipped when a backend or its test lacks them, with a message containing
// "optional capability"; core clauses are never skipped.
//
// Timings scale with the backend: TTLs are at least Config.MinTTL and a
// whole number of Config.TTLGranularity steps, and expiry is expected within
// Config.ExpirySlack after the TTL. On top of that the suite allows
// [SchedulingSlack] for a loaded machine running with -race.
//
// Time bounds are judged by when the server could have seen a probe, never
// by when a stalled machine got its answer: a probe that finds a key still
// held breaks an expiry bound only if it was sent after the bound; one that
// finds it free breaks a hold only if its answer came back before the TTL
// could have run out; a blocked lock.Acquire is late only if the attempt
// that took the key was sent after the bound, by more than the round trip
// of the attempt before it. A late answer is inconclusive, never a failure
// by itself: the next probe decides.
//
// # Running time and -short
//
// Most clauses wait out a few short TTLs. The statistical clauses
// (StaleCallsAtExpiry, TokensIncreaseLongRun, TokenOrder,
// ConcurrentLeaseCalls, ClaimCompleteRace) run rounds until a time budget
// stated in their descriptions below is spent; with -short every budget is a
// quarter as long (and round targets a quarter as many), and
// StaleCallsNearNewerExpiry and RefreshLate use the short TTL instead of a
// second (a loaded machine then more often makes a round inconclusive).
// That makes them weaker but keeps every clause running.
//
// Measured with -race on a shared 2-core machine under load: on an
// in-memory backend with a 1 ms TTL step, Run takes about 13 s (8 s with
// -short) and RunStore about 5 s (4 s); on Redis, 15 s (11 s) and 5 s
// (5 s). Backends whose TTLs count in seconds take longer, because most
// clauses wait out a TTL of at least a second: memcached and Consul about
// 50 s and 17 s, etcd (whose leases last at least 2 s) about 85 s and 21 s.
//
// # The clauses of Run
//
// Run checks a [lock.Locker] and its leases:
//
//   - InvalidInput: empty, over-long and invalid UTF-8 keys, non-positive
//     TTLs and a nil context get typed errors (lock.ErrInvalidKey,
//     lock.ErrInvalidTTL), never a panic; a bad Refresh changes nothing.
//   - TakeAndRelease: a free key can be taken and released, by the same and
//     by another Locker; tokens are above zero; Deadline() is about the TTL.
//   - HeldKeyRefused: a held key is refused with lock.ErrNotAcquired, by
//     the same Locker and by another.
//   - OneWinner: exactly one of 16 concurrent TryAcquire calls on 4 Lockers
//     wins, ten times.
//   - IndependentKeys: releasing one key leaves another held.
//   - StrangeKeys: keys with spaces, NUL, control characters, slashes,
//     percent signs, hash tags, Unicode, and of the maximum length are each
//     their own lock.
//   - ReleaseTwice: a second Release reports lock.ErrNotHeld, and leaves a
//     newer holder alone.
//   - RefreshAfterRelease: Refresh after Release reports lock.ErrNotHeld and
//     takes nothing.
//   - Expiry: a lease is held at half its TTL and free soon after it.
//   - RefreshExtends: a Refresh to a longer TTL outlives the first TTL.
//   - ExpiredLeaseNotHeld: Refresh and Release after expiry report
//     lock.ErrNotHeld.
//   - StaleReleaseOwnerChecked: an expired lease's Release leaves a newer
//     holder's lock in place.
//   - StaleRefreshOwnerChecked: an expired lease's Refresh reports
//     lock.ErrNotHeld and does not extend a newer holder.
//   - TokensIncrease: tokens increase over 12 takes on three Lockers, and
//     after another key was used.
//   - TokensIncreaseAcrossExpiry: tokens increase after the key expired and
//     its storage may have gone.
//   - ContextCancelled: TryAcquire, Refresh and Release with a cancelled
//     context return its error at once, and the take took nothing.
//   - AcquireDeadline: lock.Acquire gives up at its deadline and when
//     cancelled mid-wait, with errors matching both lock.ErrNotAcquired and
//     the context's error.
//   - AcquireWakesOnRelease: a blocked lock.Acquire takes the key within one
//     polling interval of its release.
//   - AcquireWaitsForExpiry: a blocked lock.Acquire takes the key once the
//     holder's TTL ran out.
//   - NotifiedWaiting (optional: lock.Notifier): a release between Subscribe
//     and Wait is not missed, a release wakes a blocked Wait, and Wait
//     honours its context.
//   - KeepAliveHolds: lock.KeepAlive keeps a lease past twice its TTL.
//   - MutualExclusion: 8 goroutines on 4 Lockers take turns with
//     lock.Acquire; no two hold at once and tokens follow the order.
//   - StaleCallsAtExpiry: a lease's Release or Refresh is aimed at the
//     instant its TTL runs out while another Locker takes the key the moment
//     it is free; the newer holder must keep its lock. Catches an owner check
//     and a change made in two requests (GET then DEL). 2 lanes, 2 s
//     (with TTL steps of 10 ms or less: and 100 rounds each, up to 8 s).
//   - StaleCallsNearNewerExpiry: stale leases (one expired, one released)
//     call Release and Refresh at 1/2, 3/4 and 7/8 of a newer holder's TTL;
//     each reports lock.ErrNotHeld and the newer lock stands and ends on
//     time. Catches a release that skips the owner check near the end.
//   - RefreshLate: a Refresh at 3/4 of a TTL of at least a second really
//     moves the deadline, checked by a probe after the old expiry (and by
//     Deadline() if the lease has it).
//   - TTLRoundsUp: TTLs of half a step and of whole steps plus a half are
//     held at least that long, and expire.
//   - TokensIncreaseLongRun: up to 5,000 takes of one key in 3 s, each
//     with a greater token. Catches counters that wrap or reset.
//   - TokenOrder: 8 goroutines race with TryAcquire for 2 s; holdings
//     ordered by time carry increasing tokens. Catches a token drawn before
//     the take.
//   - ConcurrentLeaseCalls: up to 200 rounds (2 s) of concurrent calls on
//     one lease: four Refreshes all succeed; a Release among three Refreshes
//     succeeds and frees the key; of two Releases exactly one succeeds.
//   - WokenWaiterGivesUp: three waiters block in lock.Acquire; the first
//     gives up at its first attempt after the release; the other two get
//     the key in turn, each within one polling interval.
//   - CancelInFlight (optional: Config.NewFaultyLocker): with the request
//     stalled, TryAcquire, Refresh and Release return within
//     SchedulingSlack of their context's end with its error; afterwards the
//     lease and the key are as the contract says.
//   - UnknownOutcome (optional: Config.NewFaultyLocker): replies of Release,
//     Refresh and TryAcquire are lost after the server applied them; the
//     lease never reports holding a key another lease holds, a retried
//     Release answers nil or lock.ErrNotHeld the same whether or not the key
//     was taken since, and a lost take holds the key no longer than its TTL.
//   - QueueOrder (optional: lock.Queuer): five waiters queue in lock.Acquire
//     one after the other; after the release each gets the key in the
//     order it began waiting, within one polling interval of the previous
//     holder's release.
//   - QueueHeadGivesUp (optional: lock.Queuer): WokenWaiterGivesUp on a
//     queue, and the two remaining waiters are served in arrival order.
//   - QueueHeadTakeLost (optional: lock.Queuer and the fault hook): the
//     same with a head whose take after the release is applied but its
//     reply lost; lock.Acquire fails with an error of unknown outcome, and
//     the two remaining waiters are served in arrival order, the first
//     within one polling interval of the end of the lost take's short TTL
//     (sooner if the backend undoes it), not of the first holder's. A head
//     that the release handed the key to without a request (with a
//     FaultDisarmer, the suite sees the fault was not taken) had no reply
//     to lose: its Acquire must return the lease, and the others follow
//     its release.
//   - QueueTicketRetryAfterLostTake (optional: lock.Queuer and the fault
//     hook): a direct Ticket user's head ticket, woken by the release, takes
//     the key with its reply lost, and retries (once answered; once with the
//     retry's reply lost too, then closes the ticket). The waiter queued
//     behind it in lock.Acquire gets the key within one polling interval of
//     the end of the lost takes' short TTL (sooner if the backend undoes
//     them), not of the first holder's. The ticket's first attempt asks for
//     a TTL of a millisecond, so that a backend that hands the key to the
//     head on release wakes it instead; if it is handed the key anyway
//     (with a FaultDisarmer, the suite sees no request was sent), the
//     clause is skipped: so it is on a backend that rounds the millisecond
//     up to a TTL step longer than the set-up takes (etcd's 2 s) and hands
//     the key on release. The waiter is on another Locker than the ticket
//     (the fault hook is never armed while another call on the ticket's
//     Locker is in flight), so a retry that wakes only the waiters of other
//     Lockers is not caught.
//   - NoGoroutineLeak: no goroutine started during the suite is left once
//     every Locker was cleaned up.
//   - NoConnectionLeak: no socket opened during the suite is left open
//     (Linux: /proc/self/fd). Catches a Locker that is never closed even
//     when its client starts no goroutine.
//
// # The clauses of RunStore
//
// [RunStore] checks an idempotency.Store (Claim and Complete):
//
//   - StoreInvalidInput: bad keys, TTLs and retentions, and a nil lease, get
//     errors; the lease still holds.
//   - ClaimTakes: Claim on a free key returns a Lease; a claimed key is
//     refused with lock.ErrNotAcquired.
//   - ClaimOneWinner: exactly one of 16 concurrent Claims wins.
//   - CompleteStores: records of 1 B, 256 B and 64 KiB of binary data are
//     returned byte for byte by every Store.
//   - CompleteEndsLease: after Complete, Refresh and Release report
//     lock.ErrNotHeld and leave the record.
//   - ReleaseFreesKey: Release stores nothing; the next Claim gets a greater
//     token.
//   - CompleteTwice: a second Complete reports lock.ErrNotHeld and keeps the
//     first record.
//   - CompleteAfterRelease: Complete after Release reports lock.ErrNotHeld
//     and stores nothing.
//   - StaleCompleteOwnerChecked: an expired lease's Complete neither
//     overwrites nor ends the newer owner.
//   - IndependentKeys: Complete and Release on one key leave others alone.
//   - RecordOutlivesLease: a record outlives the lease's TTL.
//   - RecordRetention: a record is replayed during its retention, and the
//     key is free afterwards with a greater token.
//   - KeepAliveClaim: a claimed lease kept alive past its TTL can Complete.
//   - OversizeRecordKeepsLease: a record of 8 MiB is stored whole or refused
//     with an error matching lock.ErrRecordTooLarge (and not
//     lock.ErrNotHeld), the lease still holding.
//   - CompleteWakesSubscribers (optional: lock.Notifier): Complete wakes
//     subscribers of the key.
//   - ClaimCompleteRace: three Stores Claim a key in a loop while its owner
//     completes it, in 4 lanes for 2 s; no Claim may take the key. Catches
//     a record kept under a different key than the lease.
//   - CancelInFlight (optional: StoreConfig.NewFaultyStore): a stalled
//     Claim and a stalled Complete return promptly with the context's error;
//     a retried Complete answers nil or lock.ErrNotHeld and the record is
//     stored.
//   - UnknownOutcome (optional: StoreConfig.NewFaultyStore): after a lost
//     Complete reply the lease reports lock.ErrNotHeld and the record stands;
//     a lost Claim holds the key no longer than its TTL.
//   - Ping (optional: lock.Pinger): Ping answers nil on a live Store, and
//     an error matching context.Canceled with a cancelled context.
//   - TTLLimits (optional: lock.TTLLimiter): the limits are consistent;
//     lock.CheckTTL accepts Min and Max and refuses below Min and above Max
//     with a *lock.TTLError; a Claim with the shortest allowed TTL holds;
//     one below Min is refused with lock.ErrInvalidTTL or lengthened.
//   - AdminInspect (optional: lock.Admin): Inspect of a free, a claimed and
//     a completed key (plain and escaped keys) reports no holding, the
//     holder's token and remaining TTL, then the record's size.
//   - AdminForceRelease (optional: lock.Admin): ForceRelease of a free key
//     reports lock.ErrNotHeld; of a held key, the holder's Refresh,
//     Complete and Release then report lock.ErrNotHeld and the next holder
//     gets a greater token; a record is left in place.
//   - AdminDeleteRecord (optional: lock.Admin): DeleteRecord of a free or
//     claimed key reports lock.ErrNotHeld and leaves the lease; of a
//     completed key it lets the next Claim take the key with a greater
//     token.
//   - ClaimFingerprint (optional: idempotency.FingerprintClaimer): a refused
//     claim gets the holder's fingerprint (nil for a plain Claim), a
//     completed key its record, a 65-byte fingerprint lock.ErrInvalidArgument;
//     in rounds of 8 concurrent claims every loser sees the winner's.
//   - LossNotification (optional: lock.LossNotifier on the leases): Lost
//     returns within SchedulingSlack, also while a request to the server
//     is stalled (with StoreConfig.NewFaultyStore); its channel is open
//     after a successful Refresh; when the Store is a lock.Admin, it is
//     closed within ExpirySlack + SchedulingSlack of a ForceRelease.
//   - NoGoroutineLeak, NoConnectionLeak: as in Run.
//
// # Writing a backend: the storage primitives
//
// A Locker needs four things from its store, each one atomic step on the
// server (one command, script or transaction), never a read followed by a
// write from the client:
//
//   - create-if-absent with a server-side TTL, for the take (Redis SET NX
//     PX, memcached add, an etcd transaction on CreateRevision == 0 with a
//     lease, a Consul acquire with a session);
//   - compare-and-delete, for Release: delete only if the value is still this
//     lease's own (a Lua script, memcached cas, a transaction on the key's
//     revision, Consul ?release=session);
//   - compare-and-expire, for Refresh: set the TTL only if the value is still
//     this lease's own;
//   - a counter or revision that never goes backwards and is not deleted
//     with the lock, for the fencing tokens.
//
// The value that Release and Refresh compare must be unique to the lease
// (a random nonce, or the token), never the client's or the process's name.
// An idempotency.Store needs two more:
//
//   - create-if-absent that returns the existing value, for Claim: one step
//     that either takes the lease or returns the record;
//   - compare-and-swap, for Complete: replace the lease's own value by the
//     record, with the retention as its TTL. The record and the lease must
//     live under one key: written as two keys, a Claim can read "no record"
//     before Complete and take the lease after it, and the work runs twice.
//
// Waiting needs, optionally, a way to learn that a key changed (pub/sub, a
// watch, a blocking query) for [lock.Notifier]; without it lock.Acquire
// polls. Package backends/kvlock is all of this written once: implement its
// KV interface (these primitives) for your store and it gives you a
// lock.Locker and an idempotency.Store that pass Run and RunStore.
//
// # The token-while-holding rule
//
// A fencing token must be issued while the take holds the key: inside the
// take's atomic step, or after it, followed by a check that the take still
// holds the key. A token drawn before the take lets a slow taker (token 5)
// take the key after a faster one (token 6) held and released it, and the
// protected resource then rejects the newer holder's writes or accepts the
// older one's. If the key may vanish between the take and the drawing of
// the token (eviction, expiry), check again after drawing and refuse the
// take if it was lost.
//
// # Unknown outcomes
//
// Every request can end done, not done, or unknown: the server applied it
// and the reply was lost, or the context ended while it was in flight. For
// each operation decide what the unknown case means:
//
//   - A take whose outcome is unknown may hold the key with nobody knowing.
//     Undo it: delete the key if it holds this attempt's own value (a
//     compare-and-delete with a fresh, bounded context), or make the take
//     idempotent so that a retry recognises its own value. At the very
//     least the key must expire with the take's TTL, never be kept alive by
//     a session or lease that outlives the attempt.
//   - After a Release, Refresh or Complete whose outcome is unknown, the
//     lease must not trust its local state: the next call asks the server.
//     A renewal fast path ("same TTL, only renew the session") must check
//     the key after an unknown outcome, or a lease that was in fact
//     released goes on reporting that it holds a key another lease took.
//   - A Release retried after a lost reply answers nil or lock.ErrNotHeld,
//     the same whether or not another lease took the key in between; say
//     which in the package doc.
//   - Pass the caller's context down to the client so that cancellation
//     works while a request is in flight, not only before it is sent.
//
// # Concurrent calls on one lease
//
// Lease methods are called concurrently: lock.KeepAlive refreshes in the
// background while the owner releases. A compare that uses a version the
// client read earlier (memcached's CAS id, an etcd revision) loses races
// against the lease's own other calls; a lost race is not a lost lease.
// Compare the lease's own value on the server, or serialise the lease's
// calls with a mutex, or re-read and retry; never report lock.ErrNotHeld
// for a key the lease still holds.
//
// # What Deadline() means
//
// [lock.Deadliner] is the local monotonic time before which the server
// certainly still holds the lease: the time the take or the latest
// successful Refresh was sent (not when its reply arrived), plus the TTL the
// server granted. It must never be later than the server's expiry;
// lock.KeepAlive cancels its context there if no refresh succeeded. A
// Refresh that failed or whose outcome is unknown leaves it unchanged.
//
// # TTL rounding
//
// Round a TTL up to the server's step, never down: memcached counts whole
// seconds (and reads 0 as "never expire" and more than 30 days as a Unix
// time), Redis PX counts milliseconds, etcd grants at least its minimum
// lease TTL, Consul sessions at least session_ttl_min. A TTL of half a step
// must become one step, not zero. Set Config.TTLGranularity to the step,
// Config.MinTTL to the shortest TTL the server honours as asked, and
// Config.ExpirySlack to how late it may expire (Consul: up to twice the TTL;
// memcached: a second).
//
// # Typed-nil pitfalls
//
// An interface holding a nil pointer is not nil. Return a literal nil
// Lease with an error, never a nil *myLease: callers check le != nil. Return
// a literal nil error, never a nil *MyError. In Complete, check the lease's
// type with a two-value type assertion and then that the pointer is not nil
// and belongs to this Store: Complete(ctx, (*myLease)(nil), …) must return
// an error matching lock.ErrInvalidArgument, not panic.
//
// # The fault hook
//
// The clauses about unknown outcomes and in-flight cancellation need to make
// the backend's client lose a reply or stall a request: set
// Config.NewFaultyLocker (and StoreConfig.NewFaultyStore) to return a
// Locker together with a [Faults] that does so below the backend (a
// go-redis hook, a gRPC interceptor, an http.RoundTripper, a net.Conn
// wrapper). Without it those clauses are skipped as optional capabilities.
package conformance
