package idempotency

import (
	"context"
	"net/http"
	"time"

	"github.com/idemlock/lock/observe"
)

// Observation: a Guard or Runner whose Store was wrapped with
// lock.ObserveStore (or lock.Observe) reports what each guarded request and
// each worker call came to as an observe.KindIdempotency event. The class
// of these events is the ServeMux pattern that routed the request (when
// there is one), else the namespace ([WithNamespace]), else
// observe.DefaultClass: the keys the Store sees are hashes, and the
// idempotency key itself is reported only with observe.WithRawKeys.

// guardEvent is what one guarded request or worker call came to. It lives
// on the stack of the call; nothing is reported unless the Store is
// observed.
type guardEvent struct {
	outcome observe.Outcome
	status  int
	err     error
}

// set records the outcome (the latest call wins).
func (e *guardEvent) set(o observe.Outcome, status int, err error) {
	e.outcome, e.status, e.err = o, status, err
}

// observe reports ev, which started at start, if it came to an outcome.
func (r *Runner) observe(ctx context.Context, class, key string, start time.Time, ev *guardEvent) {
	if ev.outcome == "" {
		return
	}
	if class == "" {
		class = r.cfg.namespace
	}
	if class == "" {
		class = observe.DefaultClass
	}
	r.obs.EmitClass(ctx, class, key, observe.Event{
		Kind: observe.KindIdempotency, Outcome: ev.outcome, Status: ev.status,
		Latency: time.Since(start), Err: ev.err,
	})
}

// requestClass is the class of a request's events: the pattern that
// routed it, if any.
func requestClass(r *http.Request) string { return r.Pattern }
