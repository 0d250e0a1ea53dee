package idempotency

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/observe"
)

// Middleware guards next: requests with a guarded method and an
// idempotency key run next at most once per (scope, key); duplicates get
// the stored response. See the package documentation for the contract.
//
// Put http.TimeoutHandler (and any middleware that answers while the
// handler is still running) outside the guard, never inside:
// http.TimeoutHandler(guard.Middleware(h), d, msg). Inside, its 503 would
// release the key while the handler still runs, and a retry would run it
// a second time; Middleware logs an error when next is an
// http.TimeoutHandler.
func (g *Guard) Middleware(next http.Handler) http.Handler {
	if next == nil {
		next = http.NotFoundHandler()
	}
	if fmt.Sprintf("%T", next) == "*http.timeoutHandler" {
		g.logger().Error("idempotency: Middleware wraps an http.TimeoutHandler: its 503 releases the key while the handler still runs, so a retry runs the handler twice; put the guard inside it instead: http.TimeoutHandler(guard.Middleware(h), d, msg)")
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.serve(w, r, next)
	})
}

// reqBuf buffers one request body while it is fingerprinted; pooled. It
// is never handed to the handler: a request that runs gets a copy of its
// own (see body), because a handler may pass the body to a goroutine that
// reads it after the middleware returned and the buffer was reused.
type reqBuf struct {
	bytes.Buffer
	lr io.LimitedReader
}

var bufPool = sync.Pool{New: func() any { return new(reqBuf) }}

// body is the request body handed to the handler in place of the
// original, which it still closes: a copy, in memory of the request's own,
// of the bytes the middleware read.
type body struct {
	bytes.Reader
	orig io.Closer
}

func (b *body) Close() error { return b.orig.Close() }

// handOver gives r a body over its own copy of b, for a handler to read
// (orig is the body read into b; nil when there was none).
func handOver(r *http.Request, orig io.ReadCloser, b []byte) *http.Request {
	if orig == nil {
		return r
	}
	nb := &body{orig: orig}
	nb.Reset(bytes.Clone(b))
	r.Body = nb
	return r
}

func (g *Guard) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	c := &g.cfg
	if !c.methods[r.Method] {
		next.ServeHTTP(w, r)
		return
	}
	vals := r.Header[c.header]
	if len(vals) == 0 {
		if c.requireKey {
			c.problem(w, http.StatusBadRequest, ProblemKeyMissing, "Idempotency key missing",
				fmt.Sprintf("%s requests to this resource need an %s header.", r.Method, c.header), 0)
			return
		}
		next.ServeHTTP(w, r)
		return
	}
	if len(vals) > 1 {
		c.problem(w, http.StatusBadRequest, ProblemKeyInvalid, "Idempotency key invalid",
			fmt.Sprintf("The %s header was sent %d times; send exactly one key.", c.header, len(vals)), 0)
		return
	}
	key, err := ParseKey(vals[0])
	if err != nil {
		var ke *KeyError
		errors.As(err, &ke)
		c.problem(w, http.StatusBadRequest, ProblemKeyInvalid, "Idempotency key invalid",
			fmt.Sprintf("The %s header is invalid: %s. A key is 1 to %d printable ASCII characters.", c.header, ke.Reason, MaxKeyLen), 0)
		return
	}
	var scope string
	if c.scope != nil {
		if scope = c.scope(r); scope == "" {
			g.scopeMissing(w, r)
			return
		}
	}

	// Buffer the body: it is part of the fingerprint, which must be known
	// before the claim, and the handler still gets all of it.
	var bodyBytes []byte
	var orig io.ReadCloser // the body read into bodyBytes, if any
	if r.Body != nil && r.Body != http.NoBody {
		if r.ContentLength > c.maxReqBody {
			tooLarge(w, c)
			return
		}
		buf := bufPool.Get().(*reqBuf)
		buf.Reset()
		defer func() {
			buf.lr.R = nil
			if buf.Cap() <= 64<<10 {
				bufPool.Put(buf)
			}
		}()
		buf.lr = io.LimitedReader{R: r.Body, N: c.maxReqBody + 1}
		_, err := buf.ReadFrom(&buf.lr)
		if err != nil {
			if r.Context().Err() != nil {
				g.ended(w)
				return
			}
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				tooLarge(w, c)
				return
			}
			c.problem(w, http.StatusBadRequest, ProblemBodyUnreadable, "Request body unreadable", "The request body could not be read.", 0)
			return
		}
		if int64(buf.Len()) > c.maxReqBody {
			tooLarge(w, c)
			return
		}
		bodyBytes, orig = buf.Bytes(), r.Body
	}
	fp := g.httpFingerprint(r, bodyBytes)
	skey := storageKey(domainHTTPKey, c.namespace, scope, key)

	if !g.r.life.enter() {
		g.shuttingDown(w)
		return
	}
	defer g.r.life.leave()
	ctx := r.Context()
	var ev guardEvent // what the request comes to, reported when the Store is observed
	if g.r.obs != nil {
		defer g.r.observe(ctx, requestClass(r), vals[0], time.Now(), &ev)
	}
	sent := time.Now()
	lease, stored, holder, err := g.r.claim(ctx, skey, &fp)
	if errors.Is(err, lock.ErrNotAcquired) && c.wait > 0 && !reused(holder, &fp) {
		lease, stored, holder, sent, err = g.waitClaim(ctx, skey, &fp)
	}
	switch {
	case errors.Is(err, lock.ErrNotAcquired) && g.r.life.shutting():
		g.shuttingDown(w)
	case errors.Is(err, lock.ErrNotAcquired) && reused(holder, &fp):
		ev.set(observe.FingerprintMismatch, http.StatusUnprocessableEntity, nil)
		c.problem(w, http.StatusUnprocessableEntity, ProblemKeyReused, "Idempotency key reused",
			"This idempotency key is in use by a request in progress with a different method, path, query or body. Use a new key for a new request.", 0)
	case errors.Is(err, lock.ErrNotAcquired):
		ev.set(observe.InProgress, http.StatusConflict, nil)
		c.problem(w, http.StatusConflict, ProblemInProgress, "Request in progress",
			"A request with this idempotency key is being processed. Retry after the delay in Retry-After to get its response.", g.r.retryAfter(err))
	case err != nil:
		if ctx.Err() != nil {
			g.ended(w) // nothing was claimed, as far as we know
			return
		}
		ev.set(observe.StoreError, http.StatusServiceUnavailable, err)
		if c.failOpen {
			ev.status = 0 // the handler answers, unguarded
			g.logger().Warn("idempotency: store unavailable, running the handler unguarded (FailOpen)", "error", err)
			next.ServeHTTP(w, handOver(r, orig, bodyBytes))
			return
		}
		g.logger().Error("idempotency: store unavailable", storeAttrs(err, "claim")...)
		c.problem(w, http.StatusServiceUnavailable, ProblemStoreUnavailable, "Idempotency store unavailable",
			fmt.Sprintf("The request was not processed because its idempotency key cannot be checked right now (%s). Retry later with the same key.", storeDetail(err)), c.retryAfter)
	case lease == nil:
		g.replay(w, stored, &fp, &ev)
	case ctx.Err() != nil:
		// Claimed just as the request ended (a long WithWait, a server
		// deadline): it was never processed, so the key goes back.
		g.r.releaseLease(ctx, lease)
		g.ended(w)
	default:
		g.run(w, handOver(r, orig, bodyBytes), next, lease, sent, &fp, &ev)
	}
}

// storeDetail says, for a problem's detail, which store call failed and
// whether it timed out.
func storeDetail(err error) string {
	var se *StoreError
	switch {
	case !errors.As(err, &se):
		return "the idempotency store failed"
	case se.Timeout > 0:
		return fmt.Sprintf("the idempotency store did not answer the %s within %v", se.Call, se.Timeout)
	}
	return fmt.Sprintf("the idempotency store failed the %s", se.Call)
}

// reused reports whether the holder of a key in flight is known to have
// claimed it for a different request.
func reused(holder []byte, fp *[fpSize]byte) bool {
	return holder != nil && subtle.ConstantTimeCompare(holder, fp[:]) != 1
}

// ended answers a request whose context ended before it was processed:
// the client left or a server deadline passed. Writing to a departed
// client is harmless; a middleware outside that is still listening (a
// deadline's own handler, a proxy) gets a true answer instead of an
// empty 200.
func (g *Guard) ended(w http.ResponseWriter) {
	g.cfg.problem(w, http.StatusServiceUnavailable, ProblemRequestEnded, "Request not processed",
		"The request ended (the client left or a server deadline passed) before it was processed. Retry with the same idempotency key.", g.cfg.retryAfter)
}

// shuttingDown refuses a request that came after Shutdown.
func (g *Guard) shuttingDown(w http.ResponseWriter) {
	g.cfg.problem(w, http.StatusServiceUnavailable, ProblemShuttingDown, "Server shutting down",
		"The server is shutting down and did not process this request. Retry with the same idempotency key.", g.cfg.retryAfter)
}

// scopeMissing refuses a request whose configured scope is empty, warning
// at most once a minute.
func (g *Guard) scopeMissing(w http.ResponseWriter, r *http.Request) {
	now := time.Now().UnixNano()
	last := g.lastScopeWarn.Load()
	if now-last >= int64(time.Minute) && g.lastScopeWarn.CompareAndSwap(last, now) {
		g.logger().Warn("idempotency: the scope function returned an empty scope, so the request was refused with 403 (is this route behind the authentication middleware?); further occurrences are not logged for a minute",
			"method", r.Method, "path", r.URL.Path)
	}
	g.cfg.problem(w, http.StatusForbidden, ProblemScopeMissing, "Caller not identified",
		"This request carries an idempotency key, but the server could not tell who sent it, so it cannot keep the key apart from other callers' keys. It was not processed.", 0)
}

func tooLarge(w http.ResponseWriter, c *config) {
	c.problem(w, http.StatusRequestEntityTooLarge, ProblemBodyTooLarge, "Request body too large",
		fmt.Sprintf("Requests with an idempotency key may have a body of at most %d bytes.", c.maxReqBody), 0)
}

// httpFingerprint hashes what identifies a request besides its key: method,
// route, query and body, each length-prefixed under a domain.
func (g *Guard) httpFingerprint(r *http.Request, body []byte) [fpSize]byte {
	if g.cfg.route != nil {
		return httpFingerprint(r.Method, "", g.cfg.route(r), r.URL.RawQuery, body)
	}
	return httpFingerprint(r.Method, r.Pattern, r.URL.Path, r.URL.RawQuery, body)
}

func httpFingerprint(method, pattern, route, query string, body []byte) [fpSize]byte {
	h := getHasher()
	h.field(domainHTTPFP)
	h.field(method)
	h.field(pattern)
	h.field(route)
	h.field(query)
	field(h, body)
	fp := h.sum()
	putHasher(h)
	return fp
}

// replay answers a duplicate from the stored record.
func (g *Guard) replay(w http.ResponseWriter, stored []byte, fp *[fpSize]byte, ev *guardEvent) {
	c := &g.cfg
	rec, err := decodeRecord(stored)
	if err == nil && rec.kind != kindHTTP {
		err = &RecordError{Reason: "a worker record under an HTTP key"}
	}
	if err != nil {
		ev.set(observe.StoreError, http.StatusInternalServerError, err)
		g.logger().Error("idempotency: stored record unreadable", "error", err)
		c.problem(w, http.StatusInternalServerError, ProblemRecordUnreadable, "Stored response unreadable",
			"The response stored for this idempotency key cannot be read. Use a new key only if repeating the operation is safe.", 0)
		return
	}
	if subtle.ConstantTimeCompare(rec.fp[:], fp[:]) != 1 {
		ev.set(observe.FingerprintMismatch, http.StatusUnprocessableEntity, nil)
		c.problem(w, http.StatusUnprocessableEntity, ProblemKeyReused, "Idempotency key reused",
			"This idempotency key was used with a different request (method, path, query or body). Use a new key for a new request.", 0)
		return
	}
	if rec.tombstone {
		ev.set(observe.Replay, http.StatusUnprocessableEntity, nil)
		c.problem(w, http.StatusUnprocessableEntity, ProblemNotReplayable, "Response not replayable",
			fmt.Sprintf("The request with this idempotency key was processed, but its response cannot be replayed: %s. It was not processed again.", rec.reason), 0)
		return
	}
	h := w.Header()
	// The stored fields replace whatever outer middleware set: first
	// clear them, then add every stored line (a field may be stored in
	// more than one group). Only what is allowed now is replayed,
	// whatever was stored then.
	var prev []byte
	rec.eachHeader(func(name, _ []byte) {
		if !bytes.Equal(name, prev) {
			delete(h, string(name))
			prev = name
		}
	})
	prev = nil
	var k string
	rec.eachHeader(func(name, value []byte) {
		if !bytes.Equal(name, prev) {
			k, prev = string(name), name
		}
		if ck, ok := c.allowed(k); ok {
			h[ck] = append(h[ck], string(value))
		}
	})
	ev.set(observe.Replay, rec.status, nil)
	h.Set(ReplayedHeader, "true")
	if bodyAllowed(rec.status) {
		// The body is known whole: send it with its length, as the
		// original (or net/http for it) would have, not chunked.
		h["Content-Length"] = []string{strconv.Itoa(len(rec.body))}
	} else {
		delete(h, "Content-Length")
	}
	w.WriteHeader(rec.status)
	if len(rec.body) > 0 {
		_, _ = w.Write(rec.body)
	}
}

// bodyAllowed reports whether a response with status may have a body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// run runs next under the claimed lease and stores or releases the key.
func (g *Guard) run(w http.ResponseWriter, r *http.Request, next http.Handler, lease lock.Lease, sent time.Time, fp *[fpSize]byte, ev *guardEvent) {
	ctx := r.Context()
	// The handler and the renewals run inside the holding an observer
	// that is an observe.HoldScoper follows (see lock.StartHold).
	k, err := g.r.keep(lock.StartHold(ctx, lease), lease, sent)
	if err != nil {
		g.r.releaseLease(ctx, lease)
		ev.set(observe.StoreError, http.StatusServiceUnavailable, err)
		g.logger().Error("idempotency: keeping the lease alive failed", "error", err)
		g.cfg.problem(w, http.StatusServiceUnavailable, ProblemStoreUnavailable, "Idempotency store unavailable",
			"The request was not processed because its idempotency key cannot be kept right now. Retry later with the same key.", g.cfg.retryAfter)
		return
	}
	rec := newRecorder(w, &g.cfg)
	done := false
	defer func() {
		if !done {
			// A panic, http.ErrAbortHandler included. It continues to
			// net/http once this returns (no recover: its stack stays
			// intact), after the response is stored or the key released.
			g.finish(ctx, w, k, rec, fp, true, ev)
		}
	}()
	next.ServeHTTP(rec, r.WithContext(withToken(k.Context(), lease.Token())))
	done = true
	g.finish(ctx, w, k, rec, fp, false, ev)
}

// finish stores the response the handler wrote, or a tombstone when it
// cannot be replayed, or releases the key. A handler that wrote a
// storable response has done its work, even if it panicked afterwards or
// the client left: its response is stored, so a retry gets it rather than
// a second run.
func (g *Guard) finish(ctx context.Context, w http.ResponseWriter, k *lock.Keeper, rec *recorder, fp *[fpSize]byte, panicked bool, ev *guardEvent) {
	c := &g.cfg
	tomb := func(reason TombstoneReason) {
		ev.set(observe.Tombstone, rec.status, nil)
		g.store1(ctx, k, &record{kind: kindHTTP, fp: *fp, tombstone: true, reason: reason}, ev)
	}
	if rec.hijack {
		tomb(TombstoneHijacked)
		return
	}
	status := rec.status
	if !rec.wrote {
		switch {
		case panicked:
			ev.set(observe.ReleasedAfterError, 0, nil)
			g.r.release(ctx, k)
			return
		case ctx.Err() != nil:
			// The client left and the handler wrote nothing: nothing
			// says the work was done.
			ev.set(observe.ReleasedAfterError, 0, ctx.Err())
			g.r.release(ctx, k)
			g.ended(w)
			return
		}
		status = http.StatusOK // what net/http sends for a silent handler
		rec.hdr, rec.nhdr = c.appendAllowed(rec.hdr[:0], w.Header())
	}
	outcome := OutcomeStore
	if !rec.terminal {
		outcome = c.classify(status, w.Header())
	}
	switch {
	case outcome != OutcomeStore:
		ev.set(observe.ReleasedAfterError, status, nil)
		g.r.release(ctx, k)
	case rec.flushed:
		tomb(TombstoneStreamed)
	case rec.over:
		tomb(TombstoneOversize)
	case rec.incomplete():
		tomb(TombstoneIncomplete)
	case hasTrailers(w.Header()):
		tomb(TombstoneTrailers)
	default:
		r := &record{kind: kindHTTP, fp: *fp, status: status, nhdr: rec.nhdr, hdr: rec.hdr, body: rec.body}
		if r.check() != nil {
			// What a replay would refuse is refused now.
			tomb(TombstoneLimits)
			return
		}
		ev.set(observe.FirstRun, status, nil)
		g.store1(ctx, k, r, ev)
	}
}

// store1 completes the key with rec, logging what goes wrong: the response
// was sent already.
func (g *Guard) store1(ctx context.Context, k *lock.Keeper, rec *record, ev *guardEvent) {
	var tomb *record
	if !rec.tombstone {
		tomb = &record{kind: rec.kind, fp: rec.fp, tombstone: true, reason: TombstoneRefused}
	}
	err := g.r.complete(ctx, k, appendRecord(nil, rec), tomb, ev)
	switch {
	case err == nil:
	case errors.Is(err, lock.ErrNotHeld):
		ev.err = errors.Join(lostCause(k), err) // the outcome stands; the loss is reported with it (and as a lock loss)
		g.logger().Warn("idempotency: the lease was lost before the response could be stored; another request may have run the handler too", "error", errors.Join(lostCause(k), err))
	case errors.Is(err, errStillStoring):
		ev.set(observe.StoreError, ev.status, err)
		g.logger().Error("idempotency: storing the response failed within the store timeout; it is retried in the background while the key stays in progress", storeAttrs(err, "complete")...)
	default:
		ev.set(observe.StoreError, ev.status, err)
		g.logger().Error("idempotency: storing the response failed; the key was released and a retry will run the handler again", storeAttrs(err, "complete")...)
	}
}

// waitClaim retries the claim until the holder finishes or the wait ends,
// paced by a lock.Waiter (woken by the Store's release events when it is a
// lock.Notifier). Claims run on the request's context, not the wait's: a
// wait that ends during a claim never abandons a lease the claim took.
func (g *Guard) waitClaim(ctx context.Context, skey string, fp *[fpSize]byte) (lock.Lease, []byte, []byte, time.Time, error) {
	wctx, cancel := context.WithTimeout(ctx, g.cfg.wait)
	defer cancel()
	// Shutdown ends the wait: the duplicate is told to retry elsewhere.
	defer context.AfterFunc(g.r.life.stopping, cancel)()
	// A subscription that cannot be made in time is no worse than none:
	// the wait polls.
	sctx, scancel := context.WithTimeout(wctx, g.cfg.storeTimeout)
	w, _ := lock.NewWaiter(sctx, g.r.store, skey) // no option: no error
	scancel()
	defer w.Close()
	for {
		sent := time.Now()
		lease, stored, holder, err := g.r.claim(ctx, skey, fp)
		if !errors.Is(err, lock.ErrNotAcquired) || reused(holder, fp) {
			return lease, stored, holder, sent, err
		}
		if w.Wait(wctx, err) != nil {
			if ctx.Err() != nil {
				return nil, nil, nil, time.Time{}, ctx.Err()
			}
			return nil, nil, nil, time.Time{}, err
		}
	}
}
