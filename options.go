package lock

import (
	"fmt"
	"time"
)

// Defaults used by [Acquire], [KeepAlive] and [Do] when no option says
// otherwise.
const (
	// DefaultTTL is the lease TTL [Do] takes. Ten seconds is the shortest
	// session TTL a default Consul agent accepts.
	DefaultTTL = 10 * time.Second
	// DefaultReleaseTimeout bounds the release [Do] makes after its function
	// returned, with a context of its own.
	DefaultReleaseTimeout = 5 * time.Second
	// DefaultMinBackoff and DefaultMaxBackoff bound the jittered polling of
	// [Acquire] on backends that cannot notify.
	DefaultMinBackoff = 2 * time.Millisecond
	DefaultMaxBackoff = 250 * time.Millisecond
)

// Each helper accepts only the options that apply to it, checked at compile
// time: an option that applies to several helpers implements several of
// these interfaces.
//
//	option                 Acquire, NewWaiter  KeepAlive  Do
//	WithBackoff            yes                 -          yes
//	WithRefreshInterval    -                   yes        yes
//	WithMaxHold            -                   yes        yes
//	WithAcquiredAt         -                   yes        -
//	WithDetached           -                   yes        -
//	WithDeferredStart      -                   yes        -
//	WithTTL                -                   -          yes
//	WithReleaseTimeout     -                   -          yes
type (
	// AcquireOption tunes [Acquire] and [NewWaiter].
	AcquireOption interface{ applyAcquire(*options) }
	// KeepAliveOption tunes [KeepAlive].
	KeepAliveOption interface{ applyKeepAlive(*options) }
	// DoOption tunes [Do].
	DoOption interface{ applyDo(*options) }
)

// BackoffOption is an option of [Acquire], [NewWaiter] and [Do]; see
// [WithBackoff].
type BackoffOption func(*options)

func (o BackoffOption) applyAcquire(c *options) { o.apply(c) }
func (o BackoffOption) applyDo(c *options)      { o.apply(c) }
func (o BackoffOption) apply(c *options) {
	if o != nil {
		o(c)
	}
}

// RenewalOption is an option of [KeepAlive] and [Do]; see
// [WithRefreshInterval] and [WithMaxHold].
type RenewalOption func(*options)

func (o RenewalOption) applyKeepAlive(c *options) { o.apply(c) }
func (o RenewalOption) applyDo(c *options)        { o.apply(c) }
func (o RenewalOption) apply(c *options) {
	if o != nil {
		o(c)
	}
}

// doOnly is an option of [Do] alone.
type doOnly func(*options)

func (o doOnly) applyDo(c *options) { o(c) }

// keepAliveOnly is an option of [KeepAlive] alone.
type keepAliveOnly func(*options)

func (o keepAliveOnly) applyKeepAlive(c *options) { o(c) }

type options struct {
	ttl            time.Duration
	refreshEvery   time.Duration // 0: a third of the TTL
	maxHold        time.Duration // 0: no cap
	releaseTimeout time.Duration
	minBackoff     time.Duration
	maxBackoff     time.Duration
	acquiredAt     time.Time // zero: when KeepAlive is called
	detached       bool
	deferred       bool
	err            error
}

// WithTTL sets the lease TTL that [Do] takes and renews (default [DefaultTTL]).
func WithTTL(ttl time.Duration) DoOption {
	return doOnly(func(o *options) {
		if err := ValidateTTL(ttl); err != nil {
			o.fail(err)
			return
		}
		o.ttl = ttl
	})
}

// WithRefreshInterval sets how often [KeepAlive] (and so [Do]) renews a
// lease (default: a third of its TTL, so two refreshes may fail before it is
// lost). It must be positive and shorter than the TTL less the loss margin
// (1% of the TTL plus 2 ms; see [KeepAlive]).
func WithRefreshInterval(d time.Duration) RenewalOption {
	return func(o *options) {
		if d <= 0 {
			o.fail(fmt.Errorf("%w: refresh interval %v is not positive", ErrInvalidArgument, d))
			return
		}
		o.refreshEvery = d
	}
}

// WithMaxHold caps the total time [KeepAlive] (and so [Do]) keeps a lease:
// at the cap renewal stops and the context is cancelled with a cause that
// matches [ErrMaxHold]. Zero means no cap.
func WithMaxHold(d time.Duration) RenewalOption {
	return func(o *options) {
		if d < 0 {
			o.fail(fmt.Errorf("%w: max hold %v is negative", ErrInvalidArgument, d))
			return
		}
		o.maxHold = d
	}
}

// WithAcquiredAt tells [KeepAlive] when the request that took the lease was
// sent. A lease that does not implement [Deadliner] is then taken to end ttl
// after t, not ttl after KeepAlive was called, so a lease handed over late
// is renewed, or found lost, in time (default: the time of the KeepAlive
// call). It is for helpers that take keys by other means than [Acquire],
// such as an idempotency Store's Claim.
func WithAcquiredAt(t time.Time) KeepAliveOption {
	return keepAliveOnly(func(o *options) {
		if t.IsZero() {
			o.fail(fmt.Errorf("%w: zero acquisition time", ErrInvalidArgument))
			return
		}
		o.acquiredAt = t
	})
}

// WithDetached makes [KeepAlive]'s renewal outlast its context: the Keeper's
// Context still ends with ctx (and with a loss), but renewal goes on until
// [Keeper.Stop] or [Keeper.Release], or until the lease is lost, which
// [Keeper.Err] then reports even though ctx had ended. It is for work that a
// request starts and that must not lose its lease when the request ends (a
// handler that goes on after its client left): the work learns from its
// context that the request is gone and decides whether to stop, and no
// other holder can take the key meanwhile. It cannot be combined with
// [WithMaxHold].
func WithDetached() KeepAliveOption {
	return keepAliveOnly(func(o *options) { o.detached = true })
}

// WithDeferredStart makes [KeepAlive] start nothing but a timer until the
// first refresh is due, even for a lease that implements [LossNotifier]:
// a hold shorter than a refresh interval then costs no goroutine. A loss
// the backend reports before that refresh cancels the Keeper's context
// only then, or is recorded by [Keeper.Stop] ([Keeper.Err] reports it). It
// is for short work whose end is checked by the owner anyway (an
// idempotency Store's Complete refuses a lease that was lost); a lease's
// local deadline is never at risk, as the first refresh comes before it.
func WithDeferredStart() KeepAliveOption {
	return keepAliveOnly(func(o *options) { o.deferred = true })
}

// WithReleaseTimeout bounds the release [Do] makes when its function returns
// (default [DefaultReleaseTimeout]).
func WithReleaseTimeout(d time.Duration) DoOption {
	return doOnly(func(o *options) {
		if d <= 0 {
			o.fail(fmt.Errorf("%w: release timeout %v is not positive", ErrInvalidArgument, d))
			return
		}
		o.releaseTimeout = d
	})
}

// WithBackoff bounds the jittered exponential backoff [Acquire] (and so [Do])
// uses between attempts on a backend that cannot notify (defaults
// [DefaultMinBackoff] and [DefaultMaxBackoff]). A wait never lasts past the
// holder's remaining TTL when the backend reports it.
func WithBackoff(min, max time.Duration) BackoffOption {
	return func(o *options) {
		if min <= 0 || max < min {
			o.fail(fmt.Errorf("%w: backoff bounds %v..%v", ErrInvalidArgument, min, max))
			return
		}
		o.minBackoff, o.maxBackoff = min, max
	}
}

func (o *options) fail(err error) {
	if o.err == nil {
		o.err = err
	}
}

// defaultOptions returns the options no option changed.
func defaultOptions() options {
	return options{
		ttl:            DefaultTTL,
		releaseTimeout: DefaultReleaseTimeout,
		minBackoff:     DefaultMinBackoff,
		maxBackoff:     DefaultMaxBackoff,
	}
}

// buildOptions applies opts with apply, skipping nil ones, and returns the
// first invalid option's error.
func buildOptions[O comparable](opts []O, apply func(O, *options)) (options, error) {
	o := defaultOptions()
	var zero O
	for _, opt := range opts {
		if opt != zero {
			apply(opt, &o)
		}
	}
	return o, o.err
}
