package idempotency

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/observe"
)

// Runner is the run-once core: it claims keys in a [Store], keeps the
// claimed lease alive while the work runs, and stores the work's result or
// releases the key. [Do] and [Once] run worker functions on one; a [Guard]
// serves HTTP requests on its own ([Guard.Runner]). Make one with
// [NewRunner]. It is safe for concurrent use.
type Runner struct {
	store Store
	cfg   core
	// life counts claims in flight for Shutdown; shared with the Guards
	// made with [Guard.With] and their Runners.
	life *lifecycle
	// obs is the observation scope of the Store (lock.ObserverOf), or nil.
	obs *observe.Scope
}

// core is what a [Runner] reads: the settings of the options [New] and
// [NewRunner] share ([SharedOption]).
type core struct {
	namespace    string
	leaseTTL     time.Duration
	retention    time.Duration
	retryAfter   time.Duration
	maxRetry     time.Duration
	storeTimeout time.Duration
	logger       *slog.Logger
}

func defaultCore() core {
	return core{
		leaseTTL:     DefaultLeaseTTL,
		retention:    DefaultRetention,
		retryAfter:   DefaultRetryAfter,
		maxRetry:     DefaultMaxRetryAfter,
		storeTimeout: DefaultStoreTimeout,
	}
}

// minLeaseTTL is the shortest lease TTL lock.KeepAlive can renew (every
// third of it).
const minLeaseTTL = 3 * time.Nanosecond

// RunnerOption configures a [Runner]. Every [SharedOption] is one; the
// options of the HTTP layer ([Option] alone) are not, and do not compile as
// one.
type RunnerOption interface{ applyRunner(*config) }

// Worker is what [Do] and [Once] run on: a [*Runner], or a [*Guard], whose
// worker core is its [Guard.Runner] (the same Store, namespace, lease TTL
// and [Guard.Shutdown]).
type Worker interface {
	runner() *Runner
}

func (r *Runner) runner() *Runner { return r }

// NewRunner returns a Runner on store, for [Do] and [Once]. Bad options are
// reported as an error matching [ErrInvalidOption], never a panic; so are a
// lease TTL or a retention the store's backend cannot honour (the error
// then also matches lock.ErrInvalidTTL and names the fix, see
// [WithLeaseTTL]).
func NewRunner(store Store, opts ...RunnerOption) (*Runner, error) {
	if store == nil {
		return nil, &OptionError{Option: "store", Reason: "nil Store"}
	}
	c := config{core: defaultCore()}
	for _, o := range opts {
		if o != nil {
			o.applyRunner(&c)
		}
	}
	if c.err != nil {
		return nil, c.err
	}
	r := &Runner{store: store, cfg: c.core, life: newLifecycle(), obs: lock.ObserverOf(store)}
	if err := r.checkTTLs(); err != nil {
		return nil, err
	}
	return r, nil
}

// Store returns the Store the Runner keeps keys in.
func (r *Runner) Store() Store { return r.store }

// checkTTLs refuses, at construction, TTLs the Store's backend cannot
// honour (see lock.CheckTTL and lock.TTLLimiter), which would otherwise
// fail every claim: the lease TTL within the backend's limits, the
// retention within its maximum.
func (r *Runner) checkTTLs() error {
	if err := lock.CheckTTL(r.store, r.cfg.leaseTTL); err != nil {
		return &OptionError{Option: "WithLeaseTTL", Reason: err.Error(), Err: err}
	}
	if r.cfg.leaseTTL < minLeaseTTL {
		err := &lock.TTLError{TTL: r.cfg.leaseTTL, Reason: fmt.Sprintf("too short to be renewed every third of it; use at least %v", minLeaseTTL)}
		return &OptionError{Option: "WithLeaseTTL", Reason: err.Error(), Err: err}
	}
	if tl, ok := r.store.(lock.TTLLimiter); ok {
		if max := tl.TTLLimits().Max; max > 0 && r.cfg.retention > max {
			err := &lock.TTLError{TTL: r.cfg.retention, Reason: fmt.Sprintf("longer than the %v this backend accepts (%T); use at most %v", max, r.store, max)}
			return &OptionError{Option: "WithRetention", Reason: err.Error(), Err: err}
		}
	}
	return nil
}

func (r *Runner) logger() *slog.Logger {
	if r.cfg.logger != nil {
		return r.cfg.logger
	}
	return slog.Default()
}

// retryAfter is the delay to tell a duplicate whose claim failed with
// held: the holder's remaining lease time when the Store reported it,
// capped, and the configured delay otherwise.
func (r *Runner) retryAfter(held error) time.Duration {
	var na *lock.NotAcquiredError
	if errors.As(held, &na) && na.Remaining > 0 {
		return min(na.Remaining, r.cfg.maxRetry)
	}
	return r.cfg.retryAfter
}

// claim claims key, with the request's fingerprint when the Store keeps
// one with the lease; holder is the in-flight request's fingerprint when
// the key is held and the Store knows it. The call is bounded by the store
// timeout; an error other than ErrNotAcquired is a [*StoreError].
func (r *Runner) claim(ctx context.Context, key string, fp *[fpSize]byte) (lease lock.Lease, record, holder []byte, err error) {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.storeTimeout)
	defer cancel()
	if fc, ok := r.store.(FingerprintClaimer); ok {
		lease, record, holder, err = fc.ClaimFingerprint(cctx, key, r.cfg.leaseTTL, append([]byte(nil), fp[:]...))
	} else {
		lease, record, err = r.store.Claim(cctx, key, r.cfg.leaseTTL)
	}
	if err != nil && !errors.Is(err, lock.ErrNotAcquired) {
		err = storeError("claim", err, cctx, ctx, r.cfg.storeTimeout)
	}
	return lease, record, holder, err
}

// keep keeps lease, claimed with a request sent at sent, alive while its
// work runs under parent, and returns the Keeper whose Context is the
// work's: it ends with parent and with a loss of the lease.
//
// Renewal lasts exactly as long as the work (lock.WithDetached): a client
// that disconnects (net/http cancels r.Context()) or a caller that cancels
// a worker's context never ends it while the handler or function is still
// running — only Stop (the work returned) or a real loss of the lease
// does. Renewal, and the watch on a Store that reports losses, starts
// when the first refresh is due (lock.WithDeferredStart): most guarded
// work ends long before, and Complete, which is owner-checked, finds a loss
// anyway. The error is lock.KeepAlive's, which the lease TTL checked at
// construction and a claimed lease never give.
func (r *Runner) keep(parent context.Context, lease lock.Lease, sent time.Time) (*lock.Keeper, error) {
	return lock.KeepAlive(parent, lease, r.cfg.leaseTTL, lock.WithAcquiredAt(sent), lock.WithDetached(), lock.WithDeferredStart())
}

// lostCause returns why k's lease was lost while the work ran, or nil.
func lostCause(k *lock.Keeper) error {
	if err := k.Err(); errors.Is(err, lock.ErrLeaseLost) {
		return err
	}
	return nil
}

// storeCtx returns a context for a call to the Store after the work ran:
// ctx's values without its cancellation, bounded by the store timeout.
func (r *Runner) storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), r.cfg.storeTimeout)
}

// release gives a lease up after the work, logging a failure. It stops
// renewal first. A lease whose loss the server confirmed (a refresh or the
// backend reported it not held) is not released: that could only report
// ErrNotHeld. A lease lost only by the local clock (no successful refresh
// before its deadline) is released all the same, since the server may
// still hold it: otherwise the key would stay locked for up to a TTL.
func (r *Runner) release(ctx context.Context, k *lock.Keeper) {
	k.Stop()
	if errors.Is(lostCause(k), lock.ErrNotHeld) {
		return
	}
	r.releaseLease(ctx, k.Lease())
}

// releaseLease releases lease on a detached context, logging a failure.
func (r *Runner) releaseLease(ctx context.Context, lease lock.Lease) {
	sctx, cancel := r.storeCtx(ctx)
	defer cancel()
	if err := lease.Release(sctx); err != nil && !errors.Is(err, lock.ErrNotHeld) {
		r.logger().Warn("idempotency: releasing a key failed; it stays in progress until its lease expires",
			storeAttrs(storeError("release", err, sctx, context.Background(), r.cfg.storeTimeout), "release")...)
	}
}

// storeAttrs are the log attributes of a failed store call: its name, the
// store timeout when it did not answer within it, and the error.
func storeAttrs(err error, call string) []any {
	var se *StoreError
	if errors.As(err, &se) {
		call = se.Call
		if se.Timeout > 0 {
			return []any{"call", call, "timeout", se.Timeout, "error", err}
		}
	}
	return []any{"call", call, "error", err}
}

// complete stores rec for k's lease. A Complete that fails for another
// reason than ErrNotHeld, ErrClosed or ErrInvalidArgument (a timeout, a
// dropped connection, a failover) is retried, with jittered backoff and the
// lease renewed when due (see [storing]), until the store timeout: the
// outcome of a failed attempt is unknown, and a retry either stores the
// record or finds the lease ended (ErrNotHeld, which is then reported).
// Only a Store's explicit refusal of the record for its size
// ([ErrRecordTooLarge]) stores tomb instead, when given (and ev then
// reports a tombstone): the work was done, so the key must never be
// released for it to run again.
//
// If the record is not stored within the store timeout, the key is not
// released either: [Runner.finish] goes on in the background, and complete
// returns an error that also matches errStillStoring. Only a Store's
// refusal (ErrInvalidArgument) releases the key at once. An error other
// than ErrNotHeld is a [*StoreError] naming the call "complete".
func (r *Runner) complete(ctx context.Context, k *lock.Keeper, rec []byte, tomb *record, ev *guardEvent) (err error) {
	k.Stop()
	sctx, cancel := r.storeCtx(ctx)
	defer cancel()
	defer func() {
		if err != nil && !errors.Is(err, lock.ErrNotHeld) {
			err = storeError("complete", err, sctx, context.Background(), r.cfg.storeTimeout)
		}
	}()
	st := r.storing(k.Lease())
	stop := time.Now().Add(r.cfg.storeTimeout)
	err = st.store(sctx, rec, stop)
	last := err
	if tomb != nil && errors.Is(err, ErrRecordTooLarge) {
		rec = appendRecord(nil, tomb)
		last = st.store(sctx, rec, stop)
		if last == nil {
			ev.set(observe.Tombstone, ev.status, err)
			r.logger().Warn("idempotency: the store refused the result for its size; a tombstone was stored instead, so duplicates get a not-replayable answer", "error", err)
			return nil
		}
		if errors.Is(last, lock.ErrNotHeld) {
			lock.ReportLoss(ctx, st.lease, last)
			return last
		}
		err = errors.Join(err, last)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, lock.ErrNotHeld), errors.Is(last, lock.ErrClosed):
		// Found gone by a renewal (a Complete that found it so has
		// reported the end already): the holding is over.
		lock.ReportLoss(ctx, st.lease, err)
		return err
	case !errors.Is(last, lock.ErrInvalidArgument):
		// The outcome is unknown and the work was done: keep the key in
		// progress and go on storing in the background.
		r.life.hold()
		go r.finish(st, rec)
		return errors.Join(err, errStillStoring)
	}
	// The store refused the record: free the key rather than leave it in
	// progress until the lease expires.
	if rerr := st.lease.Release(sctx); rerr != nil && !errors.Is(rerr, lock.ErrNotHeld) {
		err = errors.Join(err, rerr)
	}
	return err
}

// errStillStoring is joined to complete's error when the record is still
// being stored in the background ([Runner.finish]).
var errStillStoring = errors.New("idempotency: the result is still being stored in the background; the key stays in progress until it is")

// finish goes on storing rec after complete's attempts within the store
// timeout failed with an unknown outcome (the store unreachable, a
// failover, a stalled or restarting server). The work was done, so the key
// stays in progress, and a duplicate gets 409 or waits, then the replay;
// releasing it would let a retry run the work again. It keeps renewing
// the lease (see [storing]) and trying Complete past the lease's local
// deadline (Complete is owner-checked, and a server that restarts may
// still hold the lease: etcd gives its leases a whole TTL again). It ends
// when the record is stored, when a call finds the lease not held and the
// record is not there, when the backend is closed, or after finishFor
// lease TTLs; it never releases the key, which then stays in progress
// until its lease expires on the server. The Runner's Shutdown waits for
// it.
func (r *Runner) finish(st *storing, rec []byte) {
	defer r.life.leave()
	switch err := st.store(context.Background(), rec, time.Now().Add(finishFor*r.cfg.leaseTTL)); {
	case err == nil:
		r.logger().Info("idempotency: the result was stored after all; the key is replayed from now on")
	default:
		why := err.Error()
		switch {
		case errors.Is(err, lock.ErrNotHeld):
			why = "the lease was lost"
		case !errors.Is(err, lock.ErrInvalidArgument) && !errors.Is(err, lock.ErrClosed):
			why = fmt.Sprintf("Complete did not succeed for %d lease TTLs (%v): %v", finishFor, finishFor*r.cfg.leaseTTL, err)
		}
		r.logger().Error("idempotency: storing the result failed for good; a retry after the lease expires will run the work again", "reason", why)
		lock.ReportLoss(context.Background(), st.lease, err) // left to expire
	}
}

// finishFor is how many lease TTLs [Runner.finish] goes on for.
const finishFor = 3

// storing is the storing of one result for a lease whose keeper stopped
// when the work returned: it makes one call on the lease at a time (never
// a Refresh racing a Complete), and renews the lease when a keeper would
// (a third of the TTL after the latest renewal; after a failed renewal,
// again within a twelfth of it), so that a Complete retried for long, or a
// store timeout longer than the lease's remaining time, never lets the
// lease run out while refreshes succeed.
type storing struct {
	r        *Runner
	lease    lock.Lease
	deadline time.Time // the lease's local deadline; zero: renew at once
	failed   bool      // the latest renewal failed
	attempts int       // Complete attempts so far
	pause    time.Duration
}

func (r *Runner) storing(lease lock.Lease) *storing {
	st := &storing{r: r, lease: lease, pause: 10 * time.Millisecond}
	if d, ok := lease.(lock.Deadliner); ok {
		st.deadline = d.Deadline()
	}
	return st
}

// untilRenewal is the time until the next renewal is due.
func (st *storing) untilRenewal() time.Duration {
	if st.deadline.IsZero() {
		return 0 // unknown (the lease is no lock.Deadliner): renew now
	}
	ttl := st.r.cfg.leaseTTL
	return time.Until(st.deadline) - (ttl - ttl/3)
}

// store calls Store.Complete with rec until it succeeds, fails for a
// reason a retry cannot change (ErrNotHeld, ErrClosed, ErrInvalidArgument,
// which ErrRecordTooLarge matches), ctx ends or stop passes, renewing the
// lease when due; it returns the latest error. A call that finds the lease
// ended after an attempt whose outcome was unknown asks (holdsRecord)
// whether that attempt was applied, which is success.
func (st *storing) store(ctx context.Context, rec []byte, stop time.Time) error {
	r, ttl := st.r, st.r.cfg.leaseTTL
	var last error
	for {
		if st.untilRenewal() <= 0 {
			rctx, cancel := context.WithTimeout(ctx, r.cfg.storeTimeout)
			sent := time.Now()
			err := st.lease.Refresh(rctx, ttl)
			cancel()
			st.failed = err != nil
			switch {
			case err == nil:
				st.deadline = sent.Add(ttl)
			case errors.Is(err, lock.ErrNotHeld):
				if st.attempts > 0 && r.holdsRecord(ctx, st.lease.Key(), rec) {
					return nil
				}
				return err
			case errors.Is(err, lock.ErrClosed):
				return err
			}
		}
		bound := min(r.cfg.storeTimeout, time.Until(stop))
		if !st.failed {
			bound = min(bound, max(st.untilRenewal(), ttl/12))
		}
		if bound <= 0 || ctx.Err() != nil {
			return cmp.Or(last, ctx.Err(), context.DeadlineExceeded)
		}
		actx, cancel := context.WithTimeout(ctx, bound)
		err := r.store.Complete(actx, st.lease, rec, r.cfg.retention)
		cancel()
		st.attempts++
		switch {
		case err == nil:
			return nil
		case errors.Is(err, lock.ErrNotHeld):
			if st.attempts > 1 && r.holdsRecord(ctx, st.lease.Key(), rec) {
				return nil
			}
			return err
		case errors.Is(err, lock.ErrInvalidArgument), errors.Is(err, lock.ErrClosed):
			return err
		}
		last = err
		// Back off, but wake for the next renewal (soon after a failed one
		// while the lease may still be held).
		d := st.pause/2 + rand.N(st.pause)
		if u := st.untilRenewal(); !st.failed && u > 0 {
			d = min(d, u)
		} else if st.failed && time.Until(st.deadline) > 0 {
			d = min(d, ttl/12)
		}
		if !time.Now().Add(d).Before(stop) {
			return last
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return last
		}
		st.pause = min(2*st.pause, time.Second)
	}
}

// holdsRecord reports whether key is completed with exactly rec. A Claim
// that takes the key instead (it is free: the earlier Complete was not
// applied) gives it up at once.
func (r *Runner) holdsRecord(ctx context.Context, key string, rec []byte) bool {
	le, stored, err := r.store.Claim(ctx, key, r.cfg.leaseTTL)
	if le != nil {
		_ = le.Release(ctx)
		return false
	}
	return err == nil && bytes.Equal(stored, rec)
}
