package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// The checks a run is judged by; a [Fault] names those it is documented to
// break in Breaks.
const (
	CheckFenced     = "fenced safety"
	CheckExclusion  = "unfenced exclusion"
	CheckTokenOrder = "token order"
	CheckLoss       = "loss detection"
	CheckLiveness   = "liveness"
	CheckLinear     = "linearizability"
	CheckEffects    = "effect count"
)

// Fault is something that goes wrong during a run, for Duration, and is
// then healed. Faults on servers come from the caller (they know the
// topology); this package adds the faults of the clients themselves.
type Fault struct {
	Name     string
	Duration time.Duration
	Inject   func(ctx context.Context, e *Env) error
	Heal     func(ctx context.Context, e *Env) error
	// Breaks lists the checks this fault is documented to break (a
	// backend's stated caveat, or what no lease can prevent): violations
	// under it are measured and explained, not failures.
	Breaks []string
	// Caveat says why, for the report.
	Caveat string
	// Stalls says the server may stand still while the fault lasts
	// (paused, restarting, electing a leader): its leases then expire
	// later than their TTL by up to that time.
	Stalls bool
	// Hits, if set, counts the times the fault acted so far (replies
	// lost, connections reset), for the report.
	Hits func() int64
}

// Combine makes one fault of several that act at the same time: injected
// in order, healed in reverse, for the longest of their durations.
func Combine(name string, fs ...Fault) Fault {
	c := Fault{Name: name}
	var caveats []string
	seen := map[string]bool{}
	for _, f := range fs {
		c.Duration = max(c.Duration, f.Duration)
		c.Stalls = c.Stalls || f.Stalls
		for _, b := range f.Breaks {
			if !seen[b] {
				seen[b] = true
				c.Breaks = append(c.Breaks, b)
			}
		}
		if f.Caveat != "" {
			caveats = append(caveats, f.Name+": "+f.Caveat)
		}
	}
	c.Caveat = strings.Join(caveats, " ")
	var names []string
	for _, f := range fs {
		names = append(names, f.Name)
	}
	c.Name = fmt.Sprintf("%s (%s)", name, strings.Join(names, ", "))
	c.Inject = func(ctx context.Context, e *Env) error {
		var errs []error
		for _, f := range fs {
			errs = append(errs, f.inject(ctx, e))
		}
		return errors.Join(errs...)
	}
	c.Heal = func(ctx context.Context, e *Env) error {
		var errs []error
		for i := len(fs) - 1; i >= 0; i-- {
			errs = append(errs, fs[i].heal(ctx, e))
		}
		return errors.Join(errs...)
	}
	c.Hits = func() int64 {
		var n int64
		for _, f := range fs {
			if f.Hits != nil {
				n += f.Hits()
			}
		}
		return n
	}
	return c
}

func (f *Fault) inject(ctx context.Context, e *Env) error {
	if f.Inject == nil {
		return nil
	}
	return f.Inject(ctx, e)
}

func (f *Fault) heal(ctx context.Context, e *Env) error {
	if f.Heal == nil {
		return nil
	}
	return f.Heal(ctx, e)
}

// Env is what a fault acts on during a run.
type Env struct {
	Backend Backend
	procs   []*proc
	workers []*worker
	rng     *rand.Rand
	paused  []*proc
}

// Pick returns k distinct numbers below n, at random.
func (e *Env) Pick(n, k int) []int {
	return e.rng.Perm(n)[:min(k, n)]
}

// PausedProcessCaveat explains the unfenced overlaps a paused worker
// process causes, on every backend.
const PausedProcessCaveat = "a process paused past its TTL (SIGSTOP, as in a long stop-the-world pause) cannot see its lease expire: " +
	"when it runs again its context is still live for a moment while the next holder works. " +
	"No lease can prevent that; the fencing token does, and the fenced-safety column shows it did."

// PauseWorkerProcess pauses one worker process (SIGSTOP) for d, then
// resumes it (SIGCONT). With d past the TTL its leases expire while it
// stands still, and its stale writes must be refused by the fence.
func PauseWorkerProcess(d time.Duration) Fault {
	return Fault{
		Name:     fmt.Sprintf("worker process paused %v", d),
		Duration: d,
		Breaks:   []string{CheckExclusion, CheckLoss},
		Caveat:   PausedProcessCaveat,
		Inject: func(_ context.Context, e *Env) error {
			if len(e.procs) == 0 {
				return errors.New("no worker process to pause")
			}
			p := e.procs[e.rng.IntN(len(e.procs))]
			if err := p.pause(); err != nil {
				return err
			}
			e.paused = append(e.paused, p)
			return nil
		},
		Heal: func(_ context.Context, e *Env) error {
			for _, p := range e.paused {
				p.resume()
			}
			e.paused = nil
			return nil
		},
	}
}

// StallHolder makes n workers of this process stall in their next
// critical section: renewals stop and the worker sleeps for d deaf to its
// context, as a holder in a long garbage-collection pause would, then asks
// Lease.Refresh whether it still holds the key and writes whatever the
// answer. With d past the TTL the fence must refuse those writes whenever
// another worker took the key meanwhile.
func StallHolder(n int, d time.Duration) Fault {
	return Fault{
		Name:     fmt.Sprintf("holder stalled %v", d),
		Duration: d,
		Inject: func(_ context.Context, e *Env) error {
			if len(e.workers) == 0 {
				return errors.New("no worker in this process to stall")
			}
			for range n {
				e.workers[e.rng.IntN(len(e.workers))].stall.pending.Store(int64(d))
			}
			return nil
		},
	}
}
