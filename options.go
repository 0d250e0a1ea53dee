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

// Option tunes [Acquire], [KeepAlive] and [Do]. Each helper reads the options
// that concern it and ignores the rest, so one option list can be shared.
type Option func(*options)

type options struct {
	ttl            time.Duration
	refreshEvery   time.Duration // 0: a third of the TTL
	maxHold        time.Duration // 0: no cap
	releaseTimeout time.Duration
	minBackoff     time.Duration
	maxBackoff     time.Duration
	err            error
}

// WithTTL sets the lease TTL that [Do] takes and renews (default [DefaultTTL]).
func WithTTL(ttl time.Duration) Option {
	return func(o *options) {
		if err := ValidateTTL(ttl); err != nil {
			o.fail(err)
			return
		}
		o.ttl = ttl
	}
}

// WithRefreshInterval sets how often [KeepAlive] renews a lease (default: a
// third of its TTL, so two refreshes may fail before it is lost). It must be
// positive and shorter than the TTL.
func WithRefreshInterval(d time.Duration) Option {
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
func WithMaxHold(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.fail(fmt.Errorf("%w: max hold %v is negative", ErrInvalidArgument, d))
			return
		}
		o.maxHold = d
	}
}

// WithReleaseTimeout bounds the release [Do] makes when its function returns
// (default [DefaultReleaseTimeout]).
func WithReleaseTimeout(d time.Duration) Option {
	return func(o *options) {
		if d <= 0 {
			o.fail(fmt.Errorf("%w: release timeout %v is not positive", ErrInvalidArgument, d))
			return
		}
		o.releaseTimeout = d
	}
}

// WithBackoff bounds the jittered exponential backoff [Acquire] uses between
// attempts on a backend that cannot notify (defaults [DefaultMinBackoff] and
// [DefaultMaxBackoff]). A wait never lasts past the holder's remaining TTL
// when the backend reports it.
func WithBackoff(min, max time.Duration) Option {
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

func buildOptions(opts []Option) (options, error) {
	o := options{
		ttl:            DefaultTTL,
		releaseTimeout: DefaultReleaseTimeout,
		minBackoff:     DefaultMinBackoff,
		maxBackoff:     DefaultMaxBackoff,
	}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	return o, o.err
}
