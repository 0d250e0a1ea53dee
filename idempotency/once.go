package idempotency

import (
	"context"
	"fmt"
	"time"

	"github.com/idemlock/lock"
)

// onceMargin is how long Once keeps a period's record past its end.
const onceMargin = time.Minute

// Once runs fn at most once per period for key, across every process
// whose [Runner] (or [Guard]) shares w's Store and namespace: the recipe for a cron job
// that several instances schedule ("send the nightly report once a day",
// "compact every ten minutes"). Unlike lock.Do, which only keeps two runs
// from overlapping, a run that finished keeps later calls in the same
// period from running again.
//
// Periods are aligned as time.Time.Truncate aligns them (a day's periods
// start at midnight UTC); fn gets the start of its period. The period is
// read from the local wall clock, so instances whose clocks disagree by d
// may each run once within d of a period's boundary. The work is [Do]'s
// under the key and its period's start: renewed while fn runs, fn's
// context carrying the fencing token ([TokenFromContext]) and ending when
// the lease is lost. What a run leaves is kept until its period ends plus
// a minute (or a period, if shorter), within the longest retention the
// backend accepts (lock.TTLLimiter: Consul keeps records for 24 h at
// most), then forgotten; a period that ends later than that is refused
// with an error matching lock.ErrInvalidTTL.
//
// It returns ran true if this call ran fn (with fn's error). Otherwise fn
// already ran in this period, successfully or with a [Permanent] error
// (then a [*StoredError]), and ran is false with a nil error; or another
// instance is running it right now, and the error is an
// [*InProgressError]. An error of fn that is not Permanent releases the
// period, so that the next call (the next tick, on any instance) runs fn
// again.
func Once(ctx context.Context, w Worker, key string, period time.Duration, fn func(ctx context.Context, start time.Time) error) (ran bool, err error) {
	var g *Runner
	if w != nil {
		g = w.runner()
	}
	switch {
	case g == nil:
		return false, fmt.Errorf("%w: nil Runner or Guard", lock.ErrInvalidArgument)
	case fn == nil:
		return false, fmt.Errorf("%w: nil function", lock.ErrInvalidArgument)
	case period <= 0:
		return false, fmt.Errorf("%w: period %v is not positive", lock.ErrInvalidArgument, period)
	}
	now := time.Now()
	start := now.Truncate(period)
	left := start.Add(period).Sub(now)
	// Kept past the period's end, for instances whose clocks lag, as far as
	// the backend keeps records.
	ret := left + min(period, onceMargin)
	if tl, ok := g.store.(lock.TTLLimiter); ok {
		if max := tl.TTLLimits().Max; max > 0 && ret > max && left <= max {
			ret = max
		}
	}
	pg := *g
	pg.cfg.retention = ret
	if err := pg.checkTTLs(); err != nil {
		return false, err
	}
	pkey := key + "\x00once/" + start.UTC().Format(time.RFC3339Nano)
	var replayed bool
	_, err = Do(ctx, &pg, pkey, func(ctx context.Context) (struct{}, error) {
		ran = true
		return struct{}{}, fn(ctx, start)
	}, Replayed(&replayed))
	return ran && !replayed, err
}
