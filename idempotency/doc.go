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
//	body over WithMaxRequestBody (1 MiB)             413 ProblemBodyTooLarge
//	new key                                          the handler runs; its response is sent
//	                                                 as written and stored or released (below)
//	same key while the first is in flight            409 ProblemInProgress with Retry-After,
//	                                                 or with WithWait: waits, then replays
//	same key, different method, route, query         422 ProblemKeyReused
//	  or body
//	same key, completed                              the stored status, body and allowed
//	                                                 headers, with Idempotent-Replayed: true
//	same key, completed but not replayable           422 ProblemNotReplayable
//	  (tombstone: see below)
//	Store unreachable                                503 ProblemStoreUnavailable (fail
//	                                                 closed), or unguarded with FailOpen
//
// The key is the header value (name set by WithHeader), as a bare token or
// a quoted Structured Field String; see [ParseKey]. The route in the
// fingerprint is r.URL.Path, together with r.Pattern when a ServeMux
// matched one (WithRoute replaces both). The middleware's own errors are
// RFC 9457 application/problem+json with type, title, status and detail
// (see [Problem] and the Problem* constants), Cache-Control: no-store, and
// are never stored.
//
// # What is stored
//
// A finished response is stored when the [Classifier] says so —
// [DefaultClassifier] stores 2xx — or when the handler called
// [MarkTerminal] (a 303 after the work was done, a declined payment's 402,
// a business-rule 409: final outcomes that must not be retried). The key
// is released, so a retry runs the handler again, for every other status
// (3xx, 4xx refusals, 5xx, 408, 429), for a panic (including
// http.ErrAbortHandler; the panic continues after the release), and when
// the client disconnected before the handler wrote a response. A handler
// that wrote a storable response before noticing the client left has done
// its work: that response is stored, so the retry gets it rather than a
// second charge.
//
// Stored: the status, the body, and the response headers on the allow-list
// (Content-Type, Content-Encoding, Content-Language, Content-Location,
// Location, ETag, Last-Modified, Cache-Control, Expires, Vary, Link, plus
// WithReplayHeaders), captured when the status was written. Never stored
// or replayed, whatever the allow-list says ([NeverStored]): Set-Cookie,
// Authorization, Proxy-Authorization, WWW-Authenticate and the other
// authentication headers, Date, and the framing headers Content-Length,
// Transfer-Encoding, Connection, Keep-Alive, TE, Trailer, Upgrade.
//
// Some completed responses cannot be replayed; for them a tombstone is
// stored, so the handler never runs twice, and duplicates get 422
// ProblemNotReplayable saying why: a body over WithMaxResponseBody (1 MiB;
// the first caller still gets all of it), a streamed response (the handler
// flushed), a hijacked connection, or a record the Store refused (larger
// than the backend holds: a memcached item, a Consul transaction). The
// ResponseWriter the handler gets keeps http.Flusher, http.Hijacker and
// http.ResponseController working (it has an Unwrap method).
//
// # Security
//
// Set a scope. [WithScope] names the caller (the authenticated principal,
// a tenant and user id); keys are per scope, so one caller can never
// replay — that is, read — another caller's stored response by sending the
// same key. WITHOUT A SCOPE ALL CALLERS SHARE ONE KEY SPACE: anyone who
// learns or guesses a key gets its response. [New] logs a warning when no
// scope is set.
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
// claim, process, complete, then ack.
//
//	receipt, err := idempotency.Do(ctx, guard, msg.ID, func(ctx context.Context) (Receipt, error) {
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
// default); an error marked [Permanent] is stored too and returned to
// duplicates as a [*StoredError]. Nothing marks a message seen before it
// was processed and its result stored, so a crash anywhere leaves it to be
// retried.
//
// # Records
//
// Completed keys are kept as a small versioned binary record (magic "IDR",
// version 1): kind, tombstone flag and reason, fingerprint, status,
// allowed header lines, body. Decoding never panics and fails with a
// [*RecordError] on anything malformed or of an unknown version.
package idempotency
