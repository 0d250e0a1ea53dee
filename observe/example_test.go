package observe_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/observe"
)

// Observation is turned on by wrapping the Locker once; lock.Do finds the
// observer on it. The logger here drops the time and durations so that
// the output is the same on every run.
func Example() {
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey, "wait", "latency", "hold":
				return slog.Attr{}
			}
			return a
		},
	}))
	l := lock.Observe(memlock.New(), observe.Slog(logger), observe.WithKeyClass(observe.PrefixClass(":")))
	err := lock.Do(context.Background(), l, "invoice:42", func(ctx context.Context, lease lock.Lease) error {
		return nil
	}, lock.WithTTL(time.Minute))
	fmt.Println("err:", err)
	// Output:
	// level=DEBUG msg="lock: try acquire" kind=try_acquire outcome=acquired backend=memlock class=invoice token=1
	// level=DEBUG msg="lock: acquire" kind=acquire outcome=acquired backend=memlock class=invoice token=1 attempts=1 wakeups=0
	// level=DEBUG msg="lock: release" kind=release outcome=ok backend=memlock class=invoice token=1
	// err: <nil>
}

// A function is an Observer too: here, one that counts lost leases.
func ExampleFunc() {
	var lost int
	count := observe.Func(func(_ context.Context, e observe.Event) {
		if e.Kind == observe.KindLost {
			lost++
		}
	})
	table := memlock.New()
	l := lock.Observe(table, count)
	ctx := context.Background()
	lease, _ := l.TryAcquire(ctx, "job", time.Minute)
	k, _ := lock.KeepAlive(ctx, lease, time.Minute)
	_ = table.ForceRelease(ctx, "job") // an operator clears the key
	<-k.Context().Done()
	k.Stop()
	fmt.Println("lost leases:", lost)
	// Output: lost leases: 1
}

// stepper is a HoldScoper that prints where a lease's holding starts and
// ends, and puts a step name in the context the work runs with: a tracer
// would start a span there, and the work's spans would be its children.
type stepper struct{}

type stepKey struct{}

func (stepper) Observe(context.Context, observe.Event) {}

func (stepper) StartHold(ctx context.Context, e observe.Event) (context.Context, func(context.Context, observe.Event)) {
	fmt.Println("hold starts:", e.Class, "token", e.Token)
	return context.WithValue(ctx, stepKey{}, "hold of "+e.Class), func(_ context.Context, e observe.Event) {
		fmt.Println("hold ends:", e.Kind, e.Outcome)
	}
}

// An Observer that is a HoldScoper is told when lock.Do starts its work
// under the lease, and gives the work its context.
func ExampleHoldScoper() {
	l := lock.Observe(memlock.New(), stepper{}, observe.WithKeyClass(observe.PrefixClass(":")))
	_ = lock.Do(context.Background(), l, "invoice:42", func(ctx context.Context, lease lock.Lease) error {
		fmt.Println("work runs inside:", ctx.Value(stepKey{}))
		return nil
	})
	// Output:
	// hold starts: invoice token 1
	// work runs inside: hold of invoice
	// hold ends: release ok
}
