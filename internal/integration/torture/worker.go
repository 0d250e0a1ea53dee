package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock"
)

// Workload is what each worker does: take a random key of Keys with
// lock.Acquire, keep it with lock.KeepAlive, write Writes times to the
// fenced resource with Hold between writes, and release it.
type Workload struct {
	Keys int
	TTL  time.Duration
	// Writes per critical section (at least 1) and the pause before each
	// write after the first.
	Writes int
	Hold   time.Duration
	// About once per LongEvery (at random) a worker holds its key for
	// LongHold in all, so that KeepAlive has to renew it (0: never).
	LongEvery time.Duration
	LongHold  time.Duration
	// AcquireTimeout bounds one lock.Acquire; ReleaseTimeout one release.
	AcquireTimeout time.Duration
	ReleaseTimeout time.Duration
}

func (w *Workload) fill() {
	if w.Keys <= 0 {
		w.Keys = 4
	}
	if w.Writes <= 0 {
		w.Writes = 2
	}
	if w.AcquireTimeout <= 0 {
		w.AcquireTimeout = 4*w.TTL + 5*time.Second
	}
	if w.ReleaseTimeout <= 0 {
		w.ReleaseTimeout = w.TTL + time.Second
	}
}

// keyName is the lock key of key index i in a run.
func keyName(prefix string, i int) string { return fmt.Sprintf("%sk%d", prefix, i) }

// stall asks the next critical section of one worker to stall: to sleep
// for the given time without looking at its context, as a holder in a long
// garbage-collection pause would, then to ask Lease.Refresh whether it
// still holds the key, and to write whatever the answer.
type stall struct {
	pending atomic.Int64 // nanoseconds; 0 when none is asked
}

func (s *stall) take() time.Duration { return time.Duration(s.pending.Swap(0)) }

// worker is one contender with a Locker (a client) of its own.
type worker struct {
	id     int
	proc   int
	prefix string
	load   Workload
	locker lock.Locker // recording
	rec    *recorder
	fence  fence
	clock  *Clock
	rng    *rand.Rand
	stall  *stall

	nextLong    time.Time // when the next long hold is due
	takes       []TakeRecord
	acquireErrs int
	lastErr     string
}

func (w *worker) run(ctx context.Context) {
	for ctx.Err() == nil {
		w.once(ctx)
	}
}

// once makes one take: acquire, critical section, release.
func (w *worker) once(ctx context.Context) {
	key := w.rng.IntN(w.load.Keys)
	name := keyName(w.prefix, key)
	t := TakeRecord{Key: key, Worker: w.id, Proc: w.proc, Invoke: w.clock.Now()}
	actx, cancel := context.WithTimeout(ctx, w.load.AcquireTimeout)
	le, err := lock.Acquire(actx, w.locker, name, w.load.TTL)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			w.acquireErrs++
			w.lastErr = err.Error()
			// A backend that fails fast (a refused connection) must not
			// turn the worker into a busy loop.
			sleepCtx(ctx, 10*time.Millisecond+time.Duration(w.rng.Int64N(int64(20*time.Millisecond))))
		}
		return
	}
	t.Taken = w.clock.Now()
	t.Lease, t.Token = leaseID(le), le.Token()

	k, err := lock.KeepAlive(ctx, le, w.load.TTL)
	if err != nil {
		// Only a programming error gets here; give the key back.
		w.lastErr = err.Error()
		t.Exit = w.clock.Now()
		t.Release = w.release(le)
		w.takes = append(w.takes, t)
		return
	}
	kctx := k.Context()
	// A lease past its deadline when Acquire returned (its reply came after
	// the TTL) gets a context that KeepAlive cancelled before returning:
	// the worker never holds it live, although the AfterFunc below notes
	// the end a moment later.
	deadOnArrival := kctx.Err() != nil
	var end struct {
		at, lost int64
		cause    string
	}
	noted := make(chan struct{})
	context.AfterFunc(kctx, func() {
		defer close(noted)
		end.at = w.clock.Now()
		if cause := context.Cause(kctx); errors.Is(cause, lock.ErrLeaseLost) {
			end.lost, end.cause = end.at, cause.Error()
		}
	})

	hold := w.load.Hold
	if w.load.LongEvery > 0 && w.load.Writes > 1 {
		now := time.Now()
		if w.nextLong.IsZero() {
			w.nextLong = now.Add(time.Duration(w.rng.Int64N(int64(w.load.LongEvery))))
		}
		if now.After(w.nextLong) {
			hold = w.load.LongHold / time.Duration(w.load.Writes-1)
			w.nextLong = now.Add(jitter(w.rng, w.load.LongEvery))
		}
	}
	stallFor := w.stall.take()
	for seq := range w.load.Writes {
		if seq > 0 {
			if stallFor > 0 && seq == 1 {
				// The renewals stop, as they would in a paused process,
				// and the worker sleeps past the TTL deaf to its context.
				t.Stalled = true
				k.Stop()
				time.Sleep(stallFor)
				rctx, cancel := context.WithTimeout(context.Background(), w.load.ReleaseTimeout)
				_ = le.Refresh(rctx, w.load.TTL) // recorded; the write follows whatever it says
				cancel()
			} else if hold > 0 && sleepCtx(kctx, jitter(w.rng, hold)) != nil {
				break
			}
		}
		if kctx.Err() != nil && !t.Stalled {
			break
		}
		ok, err := w.fence.Write(ctx, Write{Key: key, Token: t.Token, Lease: t.Lease, Worker: w.id, Seq: seq})
		if err != nil {
			break // the run is ending
		}
		if !ok {
			t.Fenced++
			break // the resource saw a newer holder: this one is stale
		}
		t.Writes++
	}
	t.Exit = w.clock.Now()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.load.ReleaseTimeout)
	err = k.Release(rctx)
	cancel()
	t.Release = outcomeOf(Release, err)
	<-noted
	t.Done, t.Lost, t.LostCause = end.at, end.lost, end.cause
	if deadOnArrival {
		t.Done = t.Taken
		if t.Lost != 0 {
			t.Lost = t.Taken
		}
	}
	w.takes = append(w.takes, t)
}

func (w *worker) release(le lock.Lease) Outcome {
	ctx, cancel := context.WithTimeout(context.Background(), w.load.ReleaseTimeout)
	defer cancel()
	return outcomeOf(Release, le.Release(ctx))
}

// jitter returns a duration uniformly spread over [d/2, 3d/2).
func jitter(rng *rand.Rand, d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + time.Duration(rng.Int64N(int64(d)))
}

// sleepCtx sleeps for d or until ctx ends, and returns ctx's error then.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// workers runs a set of workers until ctx ends and gathers their records.
type workerSet struct {
	ws    []*worker
	close []func() error
}

func (s *workerSet) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, w := range s.ws {
		wg.Go(func() { w.run(ctx) })
	}
	wg.Wait()
}

// records returns what the workers recorded, after run returned.
func (s *workerSet) records() Records {
	var r Records
	for _, w := range s.ws {
		r.Ops = append(r.Ops, w.rec.drain()...)
		r.Takes = append(r.Takes, w.takes...)
		r.AcquireErrors += w.acquireErrs
		if w.lastErr != "" {
			r.LastError = w.lastErr
		}
	}
	return r
}

func (r *Records) merge(o Records) {
	r.Ops = append(r.Ops, o.Ops...)
	r.Takes = append(r.Takes, o.Takes...)
	r.AcquireErrors += o.AcquireErrors
	if o.LastError != "" {
		r.LastError = o.LastError
	}
}

// Records is what a set of workers recorded.
type Records struct {
	Ops           []Op
	Takes         []TakeRecord
	AcquireErrors int    // Acquire calls that ended without a lease
	LastError     string // one of their errors
}
