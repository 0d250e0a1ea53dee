// Package idempotency makes duplicate submissions harmless: double clicks,
// client and proxy retries, replayed mobile requests, redelivered queue
// messages. A lock on the key only stops concurrent duplicates; this
// package stores the outcome of the first request and replays it to every
// later one, on whichever backend the organization runs: every idemlock
// backend's Locker is a [Store] (memlock.New(), redislock.New(client),
// etcdlock.New(client), consullock.New(client), memcachedlock.New(client),
// or anything lock.Open returns for their URLs).
//
//	store := memlock.New()
//	guard, err := idempotency.New(store, idempotency.WithScope(userID))
//	mux.Handle("POST /checkout", guard.Middleware(checkout))
//
// # The life of a key
//
// A key is absent until a request or [Do] call claims it (Store.Claim, one
// round trip, which also returns a completed record if there is one).
// Claimed, it is in progress: a short lease (WithLeaseTTL, default 10 s)
// with a fencing token ([TokenFromContext]) that is renewed with
// lock.KeepAlive while the work runs and whose loss cancels the work's
// context. The work then either completes — Store.Complete stores the
// record and ends the lease in one owner-checked step, kept for a separate,
// longer retention (WithRetention, default 24 h) — or is released
// (lease.Release), so the client may retry. A lease lost mid-work (the
// process paused past its TTL, the backend failed over) makes Complete
// refuse with lock.ErrNotHeld: a stale owner never overwrites a newer one.
// On Redis a first request costs two round trips (Claim, Complete) and a
// replay one.
//
// # HTTP contract
//
// The middleware follows draft-ietf-httpapi-idempotency-key-header and
// Stripe's practice:
//
//	request                                          response
//	GET, HEAD, OPTIONS, TRACE (never guarded);       passed through untouched
//	  PUT, DELETE unless WithMethods adds them
//	POST or PATCH without a key                      passed through, or 400 with RequireKey
//	invalid key: empty, a list (several header       400 ProblemKeyInvalid
//	  lines or a comma), not printable ASCII,
//	  over 255 bytes
//	WithScope set, and it names no caller            403 ProblemScopeMissing
//	body over WithMaxRequestBody (1 MiB)             413 ProblemBodyTooLarge
//	new key                                          the handler runs; its response is sent
//	                                                 as written and stored or released (below)
//	same key while the first is in flight            409 ProblemInProgress with Retry-After
//	                                                 (the holder's remaining lease time, at
//	                                                 most WithMaxRetryAfter, 10 s), or with
//	                                                 WithWait: waits, then replays
//	same key, different method, route, query         422 ProblemKeyReused (while the first
//	  or body                                        is in flight too, on a Store that is
//	                                                 a FingerprintClaimer)
//	same key, completed                              the stored status, body and allowed
//	                                                 headers, with Idempotent-Replayed: true
//	same key, completed but not replayable           422 ProblemNotReplayable
//	  (tombstone: see below)
//	Store unreachable, or no answer to the claim     503 ProblemStoreUnavailable (fail
//	  within WithStoreTimeout (5 s)                  closed) naming the call, or unguarded
//	                                                 with FailOpen
//	request context ended before it was processed   503 ProblemRequestEnded with Retry-After
//	after Guard.Shutdown                             503 ProblemShuttingDown with Retry-After
//
// The key is the header value (name set by WithHeader), as a bare token or
// a quoted Structured Field String, with RFC 8941 parameters allowed and
// ignored; see [ParseKey]. The route in the fingerprint is r.URL.Path,
// together with r.Pattern when a ServeMux matched one (WithRoute replaces
// both). The middleware's own errors are RFC 9457
// application/problem+json with type, title, status and detail (see
// [Problem] and the Problem* constants; [WithProblemTypes] sets the type
// URIs), Cache-Control: no-store, and are never stored.
//
// Put the guard inside anything that answers while the handler still
// runs, http.TimeoutHandler above all:
//
//	mux.Handle("POST /checkout", http.TimeoutHandler(guard.Middleware(checkout), 10*time.Second, "timeout"))
//
// The client then gets the timeout's 503 and its retry 409 until the
// handler is done, then the stored response. The other way round, the
// timeout's 503 would release the key while the handler still runs and a
// retry would run it a second time; [Guard.Middleware] logs an error when
// it is handed an http.TimeoutHandler.
//
// # What is stored
//
// A finished response is stored when the [Classifier] says so —
// [DefaultClassifier] stores 2xx — or when the handler called
// [MarkTerminal] (a 303 after the work was done, a declined payment's 402,
// a business-rule 409: final outcomes that must not be retried). The key
// is released, so a retry runs the handler again, for every other status
// (3xx, 4xx refusals, 5xx, 408, 429), for a panic before a storable
// response was written, and when the client disconnected before the
// handler wrote a response. A handler that wrote a storable response has
// done its work, whatever happens next: if the client left, or the
// handler panicked afterwards (http.ErrAbortHandler included), that
// response is stored, so the retry gets it rather than a second charge;
// a panic then continues to net/http.
//
// Stored: the status, the body, and the response headers on the allow-list
// (Content-Type, Content-Encoding, Content-Language, Content-Location,
// Location, ETag, Last-Modified, Cache-Control, Expires, Vary, Link, plus
// WithReplayHeaders), captured when the status was written. Never stored
// or replayed, whatever the allow-list says ([NeverStored]): Set-Cookie,
// Authorization, Proxy-Authorization, WWW-Authenticate and the other
// authentication headers, Date, and the framing headers Content-Length,
// Transfer-Encoding, Connection, Keep-Alive, TE, Trailer, Upgrade. Header
// names are stored in canonical form (a name set through the map as
// w.Header()["ETag"] is replayed as Etag). A replay sends Content-Length,
// the length of the stored body, as the original did or could have. The
// body is replayed as stored, with its Content-Encoding, whatever the
// retry's Accept-Encoding (a retry is the same request): put compression
// middleware outside the guard, so that what is stored is the identity
// encoding and every replay is compressed for its own client.
//
// Some completed responses cannot be replayed; for them a tombstone is
// stored, so the handler never runs twice, and duplicates get 422
// ProblemNotReplayable saying why: a body over WithMaxResponseBody (1 MiB;
// the first caller still gets all of it), a streamed response (the handler
// flushed), a hijacked connection, trailers (which are not stored), a body
// shorter than the Content-Length the handler declared (it panicked
// mid-body), more than 256 header lines, or a record the Store refused
// with [ErrRecordTooLarge] (larger than the backend holds: a memcached
// item, a Consul transaction). Whatever would fail to replay is refused
// when it is stored, never discovered at replay. The
// ResponseWriter the handler gets keeps http.Flusher, http.Hijacker and
// http.ResponseController working (it has an Unwrap method).
//
// # What happens when things fail
//
// One line per edge; "the work" is the handler or the [Do] function.
//
//   - Client disconnects, or a server deadline ends the request, while the
//     work runs: the lease is still renewed until the work returns (renewal
//     runs on a context detached from the request); duplicates get 409
//     meanwhile; a storable response is then stored; if nothing was
//     written, the key is released and a 503 ProblemRequestEnded written.
//   - A worker's caller cancels ctx while fn runs (a shutdown): the same;
//     fn's context ends, the lease does not, and fn's result is stored.
//   - The request context ends before the work ran (while the body was
//     read, during the claim, or during WithWait): 503 ProblemRequestEnded
//     with Retry-After, the key free; never an empty 200.
//   - The work panics after writing a storable response
//     (http.ErrAbortHandler included): the response is stored, then the
//     panic continues; before that, the key is released.
//   - The lease is lost (a refresh reports it not held, the backend says
//     so, or no refresh succeeds before its local deadline): the work's
//     context is cancelled with lock.ErrLeaseLost; its result is stored
//     only if Complete still finds the lease held; a deadline-only loss is
//     released, since the server may still hold the key.
//   - Complete fails with an unknown outcome (timeout, dropped
//     connection, failover): retried within WithStoreTimeout, the lease
//     renewed between attempts as the keep-alive would, a Claim
//     recognising an attempt that was applied; then retried in the
//     background for up to three lease TTLs, renewed the same way, and
//     Complete tried past the lease's local deadline too (it
//     is owner-checked, and a restarted server may still hold the lease),
//     while the key stays in progress: duplicates get 409, or wait, then
//     the replay; [Do] returns a [*StoreError] saying so, and a retry of
//     the message gets [ErrInProgress], then the result; [Guard.Shutdown]
//     waits for it. The key is never released once the work was done. If
//     the record cannot be stored (the lease lost, or a store down for
//     three lease TTLs), the key stays in progress until its lease expires
//     on the server, and a retry after that runs the work again: the
//     effect can happen twice (measured in RELIABILITY.md; the work's own
//     idempotency, such as a payment provider's key, is the remedy).
//   - The store refuses the record as too large: a tombstone; duplicates
//     get 422 ProblemNotReplayable and the work never runs again.
//   - A response a record cannot replay (streamed, hijacked, trailers, an
//     unfinished Content-Length, over the size cap, more than 256 header
//     lines): a tombstone, decided when it is stored.
//   - A stored record that cannot be decoded (corrupt, unknown version, a
//     status net/http refuses): 500 ProblemRecordUnreadable, never a panic.
//   - The store is unreachable at the claim, or does not answer it within
//     WithStoreTimeout (every store call the Guard makes is bounded by it:
//     claim, a waiting duplicate's claims and subscription, Complete,
//     Release): 503 ProblemStoreUnavailable within the store timeout, its
//     detail and the log naming the call (or the handler runs unguarded
//     with FailOpen); Do returns a [*StoreError] (matching ErrStore) that
//     names it.
//   - WithWait's release events fail (a broken subscription): the wait
//     polls until it ends, then 409 or the replay.
//   - WithScope set and it returns "": 403 ProblemScopeMissing, a logged
//     warning (at most one a minute); nothing runs, nothing replays.
//   - A different request with the key of one in flight: 409 (422 when
//     the Store is a [FingerprintClaimer]); after it completed: 422.
//   - http.TimeoutHandler inside the guard: an error is logged at
//     construction; the supported order is the guard inside (above).
//   - The handler keeps reading the request body after it returned (a
//     goroutine): the body is its own memory, never reused.
//   - A [Permanent] error: stored; duplicates get a [*StoredError] that
//     matches the same sentinel errors (by text) as the first call's.
//
// # Security
//
// Set a scope. [WithScope] names the caller (the authenticated principal,
// a tenant and user id); keys are per scope, so one caller can never
// replay — that is, read — another caller's stored response by sending the
// same key. WITHOUT A SCOPE ALL CALLERS SHARE ONE KEY SPACE: anyone who
// learns or guesses a key gets its response. [New] logs a warning when no
// scope is set. With a scope set, a request it names no caller for (an
// empty string) is refused with 403 ProblemScopeMissing, never merged
// with other anonymous requests into one key space.
//
// The Store never sees a raw key: it gets "idem/" and the hex SHA-256 of
// (a domain string, the namespace, the scope, the key), each field
// length-prefixed, so keys cannot collide across scopes or leak through
// the backend (a Redis key, an etcd path). Request fingerprints are SHA-256
// too, compared with crypto/subtle in constant time. The request body is
// read whole (up to the cap) to fingerprint it and handed to the handler
// from that buffer; a body over the cap is refused with 413 rather than
// fingerprinted by a prefix, which would let two requests share a
// fingerprint. When the Store cannot be reached the middleware fails
// closed with 503, unless a Guard made with [Guard.With](FailOpen()) is
// used for routes where a duplicate is cheaper than an outage.
//
// # Workers
//
// [Do] is the same life of a key for queue consumers and cron jobs:
// claim, process, complete, then ack. It runs on a [Runner], the run-once
// core without the HTTP layer, made with [NewRunner] and only the options
// that apply to it ([SharedOption]s); a [Guard] can be passed instead, and
// its worker calls then share its Store, namespace and [Guard.Shutdown].
//
//	runner, err := idempotency.NewRunner(store, idempotency.WithNamespace("billing/"))
//	...
//	receipt, err := idempotency.Do(ctx, runner, msg.ID, func(ctx context.Context) (Receipt, error) {
//		return sendReceipt(ctx, msg) // ctx ends if the lease is lost
//	}, idempotency.WithPayload(msg.Body))
//	var busy *idempotency.InProgressError
//	switch {
//	case errors.As(err, &busy):
//		msg.Nack(busy.RetryAfter) // another consumer has it: retry later
//	case err != nil:
//		msg.Nack(0) // fn failed: the key was released, redelivery reruns it
//	default:
//		msg.Ack() // the result is stored before the ack, never after
//	}
//
// A duplicate gets the stored result (decoded with the [Codec], JSON by
// default; see Codec for what JSON drops); an error marked [Permanent] is
// stored too and returned to duplicates as a [*StoredError] that matches
// the same sentinels. Nothing marks a message seen before it was processed
// and its result stored, so a crash anywhere leaves it to be retried.
//
// A cron job that every instance schedules runs once per period with
// [Once], keyed by the period's start (lock.Do only keeps runs from
// overlapping, so each instance would run it once per period):
//
//	ran, err := idempotency.Once(ctx, runner, "nightly-report", 24*time.Hour,
//		func(ctx context.Context, day time.Time) error { return sendReport(ctx, day) })
//
// # Shutdown
//
// [Guard.Shutdown] (and [Runner.Shutdown]) stops taking new claims (503
// ProblemShuttingDown with Retry-After; Do returns [ErrShutdown]) and waits until every claim in
// flight was completed or released; call it before closing the backend.
//
// # Records
//
// Completed keys are kept as a small versioned binary record (magic "IDR",
// version 1): kind, tombstone flag and reason, fingerprint, status,
// allowed header lines, body. Decoding never panics and fails with a
// [*RecordError] on anything malformed or of an unknown version; the
// encoder applies the same checks before storing. Tombstone reasons added
// later in version 1 (limits, trailers, incomplete body) are refused by
// readers built before them, as an unknown record.
package idempotency
