package lock

import (
	"context"
	"errors"
	"fmt"
)

// Do runs fn while holding key: it waits for the lock with [Acquire], keeps
// the lease alive with [KeepAlive] for the whole run, and releases it when fn
// returns, with a fresh context bounded by [WithReleaseTimeout], even if ctx
// was cancelled or fn panicked (the panic then continues).
//
// fn receives the Keeper's context and the lease. On a Locker made by
// [Observe] whose observer is an observe.HoldScoper, that context derives
// from the one the observer's StartHold returned (see [StartHold]): with
// the OpenTelemetry adapter, the spans fn makes are children of the
// lease's lock.hold span. The context is cancelled
// the moment the lease is lost, so fn must stop touching the protected
// resource when it ends. The lease is there for its fencing token
// ([Lease.Token]), which fn passes with every write so that the resource
// can refuse a holder that lost the lock; fn must not Refresh or Release
// it, as Do does both. The TTL comes from [WithTTL] (default [DefaultTTL]).
//
// The error is fn's, joined with an error matching [ErrLeaseLost] if the
// lease was lost while fn ran (fn may then not have run alone), or with the
// release error. A lease lost only because its local deadline passed without
// a successful renewal is still released: the server may hold the key for a
// while longer, and the release frees it for the next holder at once (it is
// owner-checked, so it never frees a newer holder's lock). Only a loss the
// backend reported (an error matching [ErrNotHeld]) skips the release.
func Do(ctx context.Context, l Locker, key string, fn func(ctx context.Context, lease Lease) error, opts ...DoOption) (err error) {
	if fn == nil {
		return fmt.Errorf("%w: nil function", ErrInvalidArgument)
	}
	o, err := buildOptions(opts, DoOption.applyDo)
	if err != nil {
		return err
	}
	lease, err := acquire(ctx, l, key, o.ttl, o)
	if err != nil {
		return err
	}
	// Observed by a HoldScoper: fn, the renewals and the release run
	// inside the observer's hold (a span fn's spans are children of).
	ctx = StartHold(ctx, lease)
	k, err := keepAlive(ctx, lease, o.ttl, o)
	if err != nil {
		return errors.Join(err, releaseDetached(ctx, lease, o))
	}
	defer func() {
		k.Stop()
		lost := context.Cause(k.ctx)
		if !errors.Is(lost, ErrLeaseLost) {
			err = errors.Join(err, releaseDetached(ctx, lease, o))
			return
		}
		err = errors.Join(err, lost)
		if errors.Is(lost, ErrNotHeld) {
			return // the backend said so: a release could only say it again
		}
		// Lost by the local deadline alone (renewals failed or hung): the
		// server may hold the key for a while yet, so give it back.
		if rerr := releaseDetached(ctx, lease, o); !errors.Is(rerr, ErrNotHeld) {
			err = errors.Join(err, rerr)
		}
	}()
	return fn(k.Context(), lease)
}

// releaseDetached releases lease with a context that keeps ctx's values but
// not its cancellation, bounded by the release timeout.
func releaseDetached(ctx context.Context, lease Lease, o options) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.releaseTimeout)
	defer cancel()
	return lease.Release(rctx)
}
