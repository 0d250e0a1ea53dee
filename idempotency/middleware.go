package idempotency

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/idemlock/lock"
)

// Middleware guards next: requests with a guarded method and an
// idempotency key run next at most once per (scope, key); duplicates get
// the stored response. See the package documentation for the contract.
func (g *Guard) Middleware(next http.Handler) http.Handler {
	if next == nil {
		next = http.NotFoundHandler()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.serve(w, r, next)
	})
}

// reqBuf buffers one request body; pooled, and never handed to the
// handler (it gets a reader over the bytes, which stay valid until the
// middleware returns).
type reqBuf struct {
	bytes.Buffer
	lr io.LimitedReader
}

var bufPool = sync.Pool{New: func() any { return new(reqBuf) }}

// body is the buffered request body handed to the handler in place of the
// original, which it still closes.
type body struct {
	bytes.Reader
	orig io.Closer
}

func (b *body) Close() error { return b.orig.Close() }

func (g *Guard) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	c := &g.cfg
	if !c.methods[r.Method] {
		next.ServeHTTP(w, r)
		return
	}
	vals := r.Header[c.header]
	if len(vals) == 0 {
		if c.requireKey {
			writeProblem(w, http.StatusBadRequest, ProblemKeyMissing, "Idempotency key missing",
				fmt.Sprintf("%s requests to this resource need an %s header.", r.Method, c.header), 0)
			return
		}
		next.ServeHTTP(w, r)
		return
	}
	if len(vals) > 1 {
		writeProblem(w, http.StatusBadRequest, ProblemKeyInvalid, "Idempotency key invalid",
			fmt.Sprintf("The %s header was sent %d times; send exactly one key.", c.header, len(vals)), 0)
		return
	}
	key, err := ParseKey(vals[0])
	if err != nil {
		var ke *KeyError
		errors.As(err, &ke)
		writeProblem(w, http.StatusBadRequest, ProblemKeyInvalid, "Idempotency key invalid",
			fmt.Sprintf("The %s header is invalid: %s. A key is 1 to %d printable ASCII characters.", c.header, ke.Reason, MaxKeyLen), 0)
		return
	}

	// Buffer the body: it is part of the fingerprint, which must be known
	// before the claim, and the handler still gets all of it.
	var bodyBytes []byte
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
				return // the client is gone
			}
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				tooLarge(w, c)
				return
			}
			writeProblem(w, http.StatusBadRequest, ProblemBodyUnreadable, "Request body unreadable", "The request body could not be read.", 0)
			return
		}
		if int64(buf.Len()) > c.maxReqBody {
			tooLarge(w, c)
			return
		}
		bodyBytes = buf.Bytes()
		nb := &body{orig: r.Body}
		nb.Reset(bodyBytes)
		r.Body = nb
	}
	fp := g.httpFingerprint(r, bodyBytes)
	var scope string
	if c.scope != nil {
		scope = c.scope(r)
	}
	skey := storageKey(domainHTTPKey, c.namespace, scope, key)

	ctx := r.Context()
	sent := time.Now()
	lease, stored, err := g.store.Claim(ctx, skey, c.leaseTTL)
	if errors.Is(err, lock.ErrNotAcquired) && c.wait > 0 {
		lease, stored, sent, err = g.waitClaim(ctx, skey, err)
	}
	switch {
	case errors.Is(err, lock.ErrNotAcquired):
		writeProblem(w, http.StatusConflict, ProblemInProgress, "Request in progress",
			"A request with this idempotency key is being processed. Retry after the delay in Retry-After to get its response.", c.retryAfter)
	case err != nil:
		if ctx.Err() != nil {
			return // the client is gone; nothing was claimed
		}
		if c.failOpen {
			g.logger().Warn("idempotency: store unavailable, running the handler unguarded (FailOpen)", "error", err)
			next.ServeHTTP(w, r)
			return
		}
		g.logger().Error("idempotency: store unavailable", "error", err)
		writeProblem(w, http.StatusServiceUnavailable, ProblemStoreUnavailable, "Idempotency store unavailable",
			"The request was not processed because its idempotency key cannot be checked right now. Retry later with the same key.", c.retryAfter)
	case lease == nil:
		g.replay(w, stored, &fp)
	default:
		g.run(w, r, next, lease, sent, &fp)
	}
}

func tooLarge(w http.ResponseWriter, c *config) {
	writeProblem(w, http.StatusRequestEntityTooLarge, ProblemBodyTooLarge, "Request body too large",
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
func (g *Guard) replay(w http.ResponseWriter, stored []byte, fp *[fpSize]byte) {
	rec, err := decodeRecord(stored)
	if err == nil && rec.kind != kindHTTP {
		err = &RecordError{Reason: "a worker record under an HTTP key"}
	}
	if err != nil {
		g.logger().Error("idempotency: stored record unreadable", "error", err)
		writeProblem(w, http.StatusInternalServerError, ProblemRecordUnreadable, "Stored response unreadable",
			"The response stored for this idempotency key cannot be read. Use a new key only if repeating the operation is safe.", 0)
		return
	}
	if subtle.ConstantTimeCompare(rec.fp[:], fp[:]) != 1 {
		writeProblem(w, http.StatusUnprocessableEntity, ProblemKeyReused, "Idempotency key reused",
			"This idempotency key was used with a different request (method, path, query or body). Use a new key for a new request.", 0)
		return
	}
	if rec.tombstone {
		writeProblem(w, http.StatusUnprocessableEntity, ProblemNotReplayable, "Response not replayable",
			fmt.Sprintf("The request with this idempotency key was processed, but its response cannot be replayed: %s. It was not processed again.", rec.reason), 0)
		return
	}
	h := w.Header()
	var prev []byte
	rec.eachHeader(func(name, value []byte) {
		// Only what is allowed now is replayed, whatever was stored then.
		if !g.cfg.replayHeader[string(name)] || neverStored[string(name)] {
			return
		}
		k := string(name)
		if !bytes.Equal(name, prev) {
			// The values of one field are stored together: the first
			// replaces whatever outer middleware set.
			h[k] = []string{string(value)}
		} else {
			h[k] = append(h[k], string(value))
		}
		prev = name
	})
	h.Set(ReplayedHeader, "true")
	w.WriteHeader(rec.status)
	_, _ = w.Write(rec.body)
}

// run runs next under the claimed lease and stores or releases the key.
func (g *Guard) run(w http.ResponseWriter, r *http.Request, next http.Handler, lease lock.Lease, sent time.Time, fp *[fpSize]byte) {
	c := &g.cfg
	ctx := r.Context()
	k := g.keep(ctx, lease, sent)
	rec := newRecorder(w, c)
	done := false
	defer func() {
		if !done {
			// A panic (http.ErrAbortHandler included): release, and let it
			// continue to net/http.
			g.release(ctx, k)
		}
	}()
	next.ServeHTTP(rec, r.WithContext(withToken(k.Context(), lease.Token())))
	done = true

	if rec.hijack {
		g.store1(ctx, k, &record{kind: kindHTTP, fp: *fp, tombstone: true, reason: TombstoneHijacked})
		return
	}
	status := rec.status
	if !rec.wrote {
		if ctx.Err() != nil {
			// The client left and the handler wrote nothing: nothing
			// says the work was done.
			g.release(ctx, k)
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
		g.release(ctx, k)
	case rec.flushed:
		g.store1(ctx, k, &record{kind: kindHTTP, fp: *fp, tombstone: true, reason: TombstoneStreamed})
	case rec.over:
		g.store1(ctx, k, &record{kind: kindHTTP, fp: *fp, tombstone: true, reason: TombstoneOversize})
	default:
		g.store1(ctx, k, &record{kind: kindHTTP, fp: *fp, status: status, nhdr: rec.nhdr, hdr: rec.hdr, body: rec.body})
	}
}

// store1 completes the key with rec, logging what goes wrong: the response
// was sent already.
func (g *Guard) store1(ctx context.Context, k *keeper, rec *record) {
	var tomb *record
	if !rec.tombstone {
		tomb = &record{kind: rec.kind, fp: rec.fp, tombstone: true, reason: TombstoneRefused}
	}
	err := g.complete(ctx, k, appendRecord(nil, rec), tomb)
	switch {
	case err == nil:
	case errors.Is(err, lock.ErrNotHeld):
		g.logger().Warn("idempotency: the lease was lost before the response could be stored; another request may have run the handler too", "error", errors.Join(k.Err(), err))
	default:
		g.logger().Error("idempotency: storing the response failed; the key was released and a retry will run the handler again", "error", err)
	}
}

// waitClaim retries the claim until the holder finishes or the wait ends,
// woken by the Store's release events when it is a lock.Notifier.
func (g *Guard) waitClaim(ctx context.Context, skey string, held error) (lock.Lease, []byte, time.Time, error) {
	wctx, cancel := context.WithTimeout(ctx, g.cfg.wait)
	defer cancel()
	var sub lock.Subscription
	if n, ok := g.store.(lock.Notifier); ok {
		if s, err := n.Subscribe(wctx, skey); err == nil {
			sub = s
			defer func() { _ = sub.Close() }()
		}
	}
	backoff := 2 * time.Millisecond
	for {
		sent := time.Now()
		lease, stored, err := g.store.Claim(wctx, skey, g.cfg.leaseTTL)
		if !errors.Is(err, lock.ErrNotAcquired) {
			if wctx.Err() != nil && ctx.Err() == nil && err != nil {
				return nil, nil, sent, held // the wait ended during the claim
			}
			return lease, stored, sent, err
		}
		held = err
		var na *lock.NotAcquiredError
		errors.As(err, &na)
		if sub != nil {
			// Completion wakes subscribers on backends that publish it;
			// expiry never does, so the wait is capped by the holder's
			// remaining time and by a second in case Complete is silent.
			step := time.Second
			if na != nil && na.Remaining > 0 && na.Remaining < step {
				step = na.Remaining + time.Millisecond
			}
			sctx, scancel := context.WithTimeout(wctx, step)
			werr := sub.Wait(sctx, na)
			scancel()
			if werr != nil && !errors.Is(werr, context.DeadlineExceeded) && wctx.Err() == nil {
				_ = sub.Close()
				sub = nil
			}
		} else {
			d := backoff/2 + rand.N(backoff)
			if na != nil && na.Remaining > 0 && d > na.Remaining {
				d = na.Remaining
			}
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-wctx.Done():
				t.Stop()
			}
			backoff = min(2*backoff, 100*time.Millisecond)
		}
		if wctx.Err() != nil {
			if ctx.Err() != nil {
				return nil, nil, time.Time{}, ctx.Err()
			}
			return nil, nil, time.Time{}, held
		}
	}
}
