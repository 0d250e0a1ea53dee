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
// fn receives the Keeper's context: it is cancelled the moment the lease is
// lost, so fn must stop touching the protected resource when it ends. The TTL
// comes from [WithTTL] (default [DefaultTTL]).
//
// The error is fn's, joined with an error matching [ErrLeaseLost] if the
// lease was lost while fn ran (fn may then not have run alone), or with the
// release error.
func Do(ctx context.Context, l Locker, key string, fn func(ctx context.Context) error, opts ...Option) (err error) {
	if fn == nil {
		return fmt.Errorf("%w: nil function", ErrInvalidArgument)
	}
	o, err := buildOptions(opts)
	if err != nil {
		return err
	}
	lease, err := Acquire(ctx, l, key, o.ttl, opts...)
	if err != nil {
		return err
	}
	k, err := KeepAlive(ctx, lease, o.ttl, opts...)
	if err != nil {
		return errors.Join(err, releaseDetached(ctx, lease, o))
	}
	defer func() {
		k.Stop()
		if lost := context.Cause(k.ctx); errors.Is(lost, ErrLeaseLost) {
			err = errors.Join(err, lost)
			return // the release could only report ErrNotHeld again
		}
		err = errors.Join(err, releaseDetached(ctx, lease, o))
	}()
	return fn(k.Context())
}

// releaseDetached releases lease with a context that keeps ctx's values but
// not its cancellation, bounded by the release timeout.
func releaseDetached(ctx context.Context, lease Lease, o options) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.releaseTimeout)
	defer cancel()
	return lease.Release(rctx)
}
