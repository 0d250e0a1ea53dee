package idempotency

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/observe"
)

// Codec encodes the results [Do] stores. JSON is the default.
//
// A duplicate gets the result as the codec gives it back, which is not
// always the value fn returned. With [JSON] (encoding/json): unexported
// fields and fields tagged "-" are dropped; a time.Time loses its
// monotonic clock reading and keeps only its offset, not its
// *time.Location; an interface-typed value comes back as map[string]any,
// []any, float64, string or bool, not as its dynamic type; a nil slice
// or map may come back empty or nil as its tags say; numbers in an
// `any` come back as float64, so integers above 2^53 lose precision.
// Results JSON cannot encode at all (channels, functions, NaN, cyclic
// values) store a tombstone instead (see [ErrNotReplayable]). Use a Codec
// of your own for exact round trips (gob, protobuf).
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// JSON is the default [Codec], encoding/json.
var JSON Codec = jsonCodec{}

// DoOption configures one call of [Do].
type DoOption func(*doConfig)

type doConfig struct {
	codec    Codec
	payload  []byte
	replayed *bool
	err      error
}

// WithCodec sets the codec of the stored result (default [JSON]).
func WithCodec(c Codec) DoOption {
	return func(d *doConfig) {
		if c == nil {
			d.err = &OptionError{Option: "WithCodec", Reason: "nil Codec"}
			return
		}
		d.codec = c
	}
}

// WithPayload fingerprints the call's input: a duplicate whose payload
// differs from the one that completed gets an error matching
// [ErrKeyReused] instead of the stored result (the worker's 422). Without
// it, the key alone identifies the work.
func WithPayload(p []byte) DoOption { return func(d *doConfig) { d.payload = p } }

// Replayed reports, through *p, whether [Do] returned a stored result
// instead of running the function.
func Replayed(p *bool) DoOption { return func(d *doConfig) { d.replayed = p } }

// Do runs fn at most once per key and returns its result; a duplicate call
// with the same key gets the stored result instead, decoded with the codec.
// It runs on w, a [*Runner] or a [*Guard] (its [Guard.Runner]): a queue
// consumer calls it with the message's id as key, then acks only when it
// returns nil.
//
//   - The key is claimed in the Store (one round trip). A stored result is
//     returned at once (see [Replayed]); a stored [Permanent] error comes
//     back as a [*StoredError].
//   - If another call holds the key, Do returns an [*InProgressError]: nack
//     the message with a delay of its RetryAfter (the holder's remaining
//     lease time when the Store reports it, capped by
//     [WithMaxRetryAfter]), do not ack it.
//   - Otherwise fn runs under the lease, renewed in the background by
//     lock.KeepAlive (started once the work outlasts a third of the lease
//     TTL, when the first refresh is due). Its context carries the fencing
//     token ([TokenFromContext]) and is cancelled the moment the lease is
//     lost or ctx ends. Renewal does not end with ctx: a caller that
//     cancels ctx (a shutdown) while fn keeps working keeps the key until
//     fn returns, so no other consumer runs fn meanwhile; fn decides
//     whether to stop.
//   - If fn fails, the key is released, so a redelivery runs fn again,
//     unless the error is [Permanent]. If fn panics, the key is released
//     and the panic continues.
//   - If fn succeeds, its result is stored with the lease in one step
//     (Store.Complete, retried within the store timeout, on a
//     context detached from ctx), which refuses if the lease was lost
//     meanwhile: then Do returns fn's result with a [*LeaseLostError]
//     (matching lock.ErrLeaseLost and lock.ErrNotHeld) that says why,
//     because another call may have run fn too, and nothing of this call
//     is stored over the newer owner's. (Not when an attempt's reply was
//     lost and the newer owner stored a record identical byte for byte:
//     records name no owner, so that one is taken for this call's and Do
//     returns the result alone.)
//
// Nothing marks the key as done before fn has returned and its result is
// stored, so a crash at any point leaves the key to be retried, never
// "seen" without having been processed. After [Runner.Shutdown] (or
// [Guard.Shutdown]), Do returns [ErrShutdown] without claiming the key.
func Do[T any](ctx context.Context, w Worker, key string, fn func(ctx context.Context) (T, error), opts ...DoOption) (result T, err error) {
	var g *Runner
	if w != nil {
		g = w.runner()
	}
	if g == nil {
		return result, fmt.Errorf("%w: nil Runner or Guard", lock.ErrInvalidArgument)
	}
	if fn == nil {
		return result, fmt.Errorf("%w: nil function", lock.ErrInvalidArgument)
	}
	if err := lock.CheckContext(ctx); err != nil {
		return result, err
	}
	if err := validWorkerKey(key); err != nil {
		return result, err
	}
	dc := doConfig{codec: JSON}
	for _, o := range opts {
		if o != nil {
			o(&dc)
		}
	}
	if dc.err != nil {
		return result, dc.err
	}
	if dc.replayed != nil {
		*dc.replayed = false
	}
	fp := workerFingerprint(dc.payload)
	skey := storageKey(domainWorkerKey, g.cfg.namespace, "", key)
	if !g.life.enter() {
		return result, ErrShutdown
	}
	defer g.life.leave()
	var ev guardEvent // what the call comes to, reported when the Store is observed
	if g.obs != nil {
		defer g.observe(ctx, "", key, time.Now(), &ev)
	}

	sent := time.Now()
	lease, stored, holder, err := g.claim(ctx, skey, &fp)
	switch {
	case errors.Is(err, lock.ErrNotAcquired) && reused(holder, &fp):
		ev.set(observe.FingerprintMismatch, 0, nil)
		return result, fmt.Errorf("%w: the payload differs from the one in progress", ErrKeyReused)
	case errors.Is(err, lock.ErrNotAcquired):
		ev.set(observe.InProgress, 0, nil)
		return result, &InProgressError{RetryAfter: g.retryAfter(err)}
	case err != nil:
		ev.set(observe.StoreError, 0, err)
		return result, err // a *StoreError naming the claim
	case lease == nil:
		ev.set(observe.Replay, 0, nil)
		if dc.replayed != nil {
			*dc.replayed = true
		}
		return replayValue[T](stored, fp, dc.codec)
	}

	// fn and the renewals run inside the holding an observer that is an
	// observe.HoldScoper follows (see lock.StartHold).
	k, err := g.keep(lock.StartHold(ctx, lease), lease, sent)
	if err != nil {
		ev.set(observe.StoreError, 0, err)
		g.releaseLease(ctx, lease)
		return result, err
	}
	panicked := true
	defer func() {
		if panicked {
			g.release(ctx, k)
		}
	}()
	result, ferr := fn(withToken(k.Context(), lease.Token()))
	panicked = false

	rec := record{kind: kindWorker, fp: fp}
	var perm *permanentError
	switch {
	case ferr != nil && !errors.As(ferr, &perm):
		ev.set(observe.ReleasedAfterError, 0, ferr)
		g.release(ctx, k)
		return result, ferr
	case ferr != nil:
		rec.stored = true
		rec.body = []byte(perm.err.Error())
		for _, t := range errorChain(perm.err)[1:] {
			rec.hdr = appendHeaderLine(rec.hdr, chainHeader, t)
			rec.nhdr++
		}
	default:
		body, merr := dc.codec.Marshal(result)
		if merr != nil {
			// fn's effect happened: store a tombstone so that it never
			// runs again, and tell the caller.
			rec.tombstone, rec.reason = true, TombstoneEncoding
			ferr = fmt.Errorf("idempotency: encoding the result of key %q: %w", key, merr)
		}
		rec.body = body
	}
	ev.set(observe.FirstRun, 0, nil)
	if rec.tombstone {
		ev.set(observe.Tombstone, 0, ferr)
	}
	var tomb *record
	if !rec.tombstone {
		tomb = &record{kind: kindWorker, fp: fp, tombstone: true, reason: TombstoneRefused}
	}
	if cerr := g.complete(ctx, k, appendRecord(nil, &rec), tomb, &ev); cerr != nil {
		if errors.Is(cerr, lock.ErrNotHeld) {
			cause := lostCause(k)
			if cause == nil {
				cause = cerr // the Store saw what the keep-alive did not
			}
			if ctx.Err() != nil {
				cause = fmt.Errorf("%w (the caller's context had ended too: %w)", cause, context.Cause(ctx))
			}
			cerr = &LeaseLostError{Key: key, Cause: cause}
			ev.err = cerr // the outcome stands; the loss is reported with it
		} else {
			ev.set(observe.StoreError, 0, cerr)
		}
		return result, errors.Join(ferr, cerr)
	}
	return result, ferr
}

// replayValue decodes a stored worker record.
func replayValue[T any](stored []byte, fp [fpSize]byte, codec Codec) (T, error) {
	var zero T
	rec, err := decodeRecord(stored)
	if err != nil {
		return zero, err
	}
	if rec.kind != kindWorker {
		return zero, &RecordError{Reason: "an HTTP record under a worker key"}
	}
	if subtle.ConstantTimeCompare(rec.fp[:], fp[:]) != 1 {
		return zero, fmt.Errorf("%w: the payload differs from the one that completed", ErrKeyReused)
	}
	switch {
	case rec.tombstone:
		return zero, &NotReplayableError{Reason: rec.reason}
	case rec.stored:
		se := &StoredError{Message: string(rec.body)}
		rec.eachHeader(func(name, value []byte) {
			if string(name) == chainHeader {
				se.chain = append(se.chain, string(value))
			}
		})
		return zero, se
	}
	var v T
	if err := codec.Unmarshal(rec.body, &v); err != nil {
		return zero, fmt.Errorf("idempotency: decoding the stored result: %w", err)
	}
	return v, nil
}

// workerFingerprint hashes a [Do] payload.
func workerFingerprint(payload []byte) [fpSize]byte {
	h := getHasher()
	h.field(domainWorkerFP)
	field(h, payload)
	fp := h.sum()
	putHasher(h)
	return fp
}
