package redislock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// faultHook carries out the faults of a testenv.FaultSwitch on the
// client's script calls (EVALSHA, or EVAL after NOSCRIPT): every lock
// operation is one script, and nothing else the Locker sends (pub/sub) is
// one. A lost reply lets the script run on the server and returns a
// timeout instead of its answer; a stall answers nothing until the
// command's context ends.
type faultHook struct{ faults *testenv.FaultSwitch }

func (h faultHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h faultHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name != "evalsha" && name != "eval" {
			return next(ctx, cmd)
		}
		switch f := h.faults.Take(); f {
		case testenv.LoseReply:
			if err := next(ctx, cmd); err != nil {
				// Not applied (NOSCRIPT, which the Locker follows with
				// EVAL, or a real failure): the fault waits for the next.
				h.faults.Rearm(f)
				return err
			}
			cmd.SetErr(testenv.ErrLostReply)
			return testenv.ErrLostReply
		case testenv.Stall:
			err := h.faults.Stall(ctx)
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (h faultHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// newFaultyLocker is conformance.Config.NewFaultyLocker: an independent
// Locker whose client carries out the faults armed on the returned switch.
func (tp topology) newFaultyLocker(t *testing.T, opts ...redislock.Option) (*redislock.Locker, *testenv.FaultSwitch) {
	t.Helper()
	faults := testenv.NewFaultSwitch(t)
	c := tp.client(t, "")
	c.AddHook(faultHook{faults})
	return locker(t, c, opts...), faults
}

// A Release whose reply was lost went through and another Locker took the
// key: a retried Release reports success (the lease's own marker, which the
// new holder's take cannot overwrite), the lease reports ErrNotHeld on
// Refresh, and the new holder is untouched. Regression test of issue 13,
// finding 4 (the retry reported ErrNotHeld).
func TestReleaseReplyLostThenTaken(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			prefix := tp.testPrefix(t)
			a, faults := tp.newFaultyLocker(t, redislock.WithPrefix(prefix))
			b := tp.newLocker(t, nil, redislock.WithPrefix(prefix))
			testenv.LoseReleaseReply(t, a, faults, b, "k", time.Minute, true)
		})
	}
}

// A Complete after a Release whose reply was lost must not report success:
// the lease's release is not its completion, and no record was stored.
// (Before the fix the script took the release's tombstone for its own
// completion.)
func TestCompleteAfterLostRelease(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			prefix := tp.testPrefix(t)
			a, faults := tp.newFaultyLocker(t, redislock.WithPrefix(prefix))
			ctx := t.Context()
			le, _, err := a.Claim(ctx, "k", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			faults.LoseNextReply()
			if err := le.Release(ctx); err == nil || errors.Is(err, lock.ErrNotHeld) {
				t.Fatalf("Release with its reply lost: %v, want an error of unknown outcome", err)
			}
			if err := a.Complete(ctx, le, []byte("done"), time.Minute); !errors.Is(err, lock.ErrNotHeld) {
				t.Errorf("Complete after the lock was released: %v, want ErrNotHeld", err)
			}
			le2, rec, err := tp.newLocker(t, nil, redislock.WithPrefix(prefix)).Claim(ctx, "k", time.Minute)
			if err != nil || le2 == nil || rec != nil {
				t.Fatalf("Claim after the release: (%v, %q, %v), want a lease and no record", le2, rec, err)
			}
			_ = le2.Release(ctx)
		})
	}
}

// Concurrent calls on one lease never misreport ownership.
func TestConcurrentLeaseCalls(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			prefix := tp.testPrefix(t)
			testenv.RaceLeaseCalls(t, tp.newLocker(t, nil, redislock.WithPrefix(prefix)), tp.newLocker(t, nil, redislock.WithPrefix(prefix)), "k", time.Minute, 200)
		})
	}
}
