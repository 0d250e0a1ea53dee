package redislock_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// TestNoScriptAfterFlush empties the servers' script caches: every
// operation must recover on its own (EVALSHA answers NOSCRIPT, EVAL runs and
// reloads the script), at the price of one extra round trip the first time.
//
// It runs on private servers, since SCRIPT FLUSH would cost every other
// client of a shared server a round trip.
func TestNoScriptAfterFlush(t *testing.T) {
	for _, kind := range []testenv.Server{testenv.Redis, testenv.RedisCluster} {
		t.Run(string(kind), func(t *testing.T) {
			tp, _ := private(t, kind)
			noLeak(t)
			var n atomic.Int64
			c := tp.client(t, "")
			c.AddHook(countHook{&n})
			l := locker(t, c, redislock.WithPrefix(tp.testPrefix(t)))
			ctx := t.Context()
			flush := func() {
				t.Helper()
				for _, node := range tp.nodes(t) {
					if err := node.ScriptFlush(ctx).Err(); err != nil {
						t.Fatalf("SCRIPT FLUSH: %v", err)
					}
				}
			}
			le, err := l.TryAcquire(ctx, "k", time.Minute) // loads the take script
			if err != nil {
				t.Fatal(err)
			}
			flush()
			before := n.Load()
			if err := le.Refresh(ctx, time.Minute); err != nil {
				t.Fatalf("Refresh after SCRIPT FLUSH: %v", err)
			}
			if got := n.Load() - before; got != 2 {
				t.Errorf("Refresh after SCRIPT FLUSH sent %d commands, want 2 (EVALSHA, then EVAL)", got)
			}
			flush()
			if _, err := l.TryAcquire(ctx, "k", time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
				t.Fatalf("TryAcquire of a held key after SCRIPT FLUSH: %v, want ErrNotAcquired", err)
			}
			flush()
			if err := le.Release(ctx); err != nil {
				t.Fatalf("Release after SCRIPT FLUSH: %v", err)
			}
			flush()
			le, rec, err := l.Claim(ctx, "c", time.Minute)
			if err != nil || le == nil || rec != nil {
				t.Fatalf("Claim after SCRIPT FLUSH: (%v, %v, %v)", le, rec, err)
			}
			flush()
			if err := l.Complete(ctx, le, []byte("r"), time.Minute); err != nil {
				t.Fatalf("Complete after SCRIPT FLUSH: %v", err)
			}
			// The first Claim reloads its script; the next is one round trip.
			if _, _, err := l.Claim(ctx, "c", time.Minute); err != nil {
				t.Fatal(err)
			}
			before = n.Load()
			if _, rec, err := l.Claim(ctx, "c", time.Minute); err != nil || string(rec) != "r" {
				t.Fatalf("Claim of the completed key: (%q, %v)", rec, err)
			}
			if got := n.Load() - before; got != 1 {
				t.Errorf("Claim with the script cached again sent %d commands, want 1", got)
			}
		})
	}
}

// TestConnectionKilled closes the client's connections on the server
// between operations: go-redis reconnects, and the lease carries on.
func TestConnectionKilled(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			noLeak(t)
			name := uniqueName(t)
			prefix := tp.testPrefix(t)
			l := locker(t, tp.client(t, name), redislock.WithPrefix(prefix))
			other := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
			ctx := t.Context()
			le, err := l.TryAcquire(ctx, "k", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if tp.kill(t, name, nil) == 0 {
				t.Fatal("found no connection to kill")
			}
			if err := le.Refresh(ctx, time.Minute); err != nil {
				t.Fatalf("Refresh after the connection was killed: %v", err)
			}
			tp.kill(t, name, nil)
			if _, err := other.TryAcquire(ctx, "k", time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
				t.Fatalf("the lease must still hold after its connection was killed: %v", err)
			}
			if err := le.Release(ctx); err != nil {
				t.Fatalf("Release after the connection was killed: %v", err)
			}
			tp.kill(t, name, nil)
			le, err = l.TryAcquire(ctx, "k", time.Minute)
			if err != nil {
				t.Fatalf("TryAcquire after the connection was killed: %v", err)
			}
			if err := le.Release(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestConnectionKilledMidCommand kills the connection while the server
// holds a take (and then a release) unexecuted, using CLIENT PAUSE WRITE on
// a private single node: go-redis re-sends the script on a new connection,
// and the outcome is exactly one lease taken and released, never a lease
// reported held that is not.
func TestConnectionKilledMidCommand(t *testing.T) {
	tp, _ := private(t, testenv.Redis)
	noLeak(t)
	name := uniqueName(t)
	prefix := tp.testPrefix(t)
	c := tp.client(t, name)
	admin := tp.client(t, "").(*redis.Client)
	l := locker(t, c, redislock.WithPrefix(prefix))
	ctx := t.Context()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	midCommand := func(what string, op func() error) {
		t.Helper()
		if err := admin.Do(ctx, "CLIENT", "PAUSE", 2000, "WRITE").Err(); err != nil {
			t.Fatalf("CLIENT PAUSE: %v", err)
		}
		defer admin.Do(context.WithoutCancel(ctx), "CLIENT", "UNPAUSE")
		done := make(chan error, 1)
		go func() { done <- op() }()
		waitFor(t, what+" waiting on the paused server", 2*time.Second, func() bool {
			for _, cn := range tp.conns(t, name) {
				if cn.fields["cmd"] == "evalsha" && strings.Contains(cn.fields["flags"], "b") {
					return true
				}
			}
			return false
		})
		if tp.kill(t, name, func(cn conn) bool { return cn.fields["cmd"] == "evalsha" }) == 0 {
			t.Fatalf("%s: no connection to kill", what)
		}
		if err := admin.Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
			t.Fatalf("CLIENT UNPAUSE: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatalf("%s with its connection killed mid-command: %v", what, err)
		}
	}
	var le lock.Lease
	midCommand("TryAcquire", func() (err error) {
		le, err = l.TryAcquire(ctx, "k", time.Minute)
		return err
	})
	v, err := c.Get(ctx, prefix+"{k}").Result()
	if err != nil || !strings.HasPrefix(v, itoa(le.Token())+":") {
		t.Fatalf("after the take the key holds %q (%v), want the lease's token %d", v, err, le.Token())
	}
	midCommand("Release", func() error { return le.Release(ctx) })
	if n, _ := c.Exists(ctx, prefix+"{k}").Result(); n != 0 {
		t.Fatalf("after the release the key still exists")
	}
}

// TestSubscriptionConnectionKilled kills the subscription connection while
// a waiter waits: the waiter re-subscribes, and the release still wakes it.
func TestSubscriptionConnectionKilled(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			noLeak(t)
			name := uniqueName(t)
			prefix := tp.testPrefix(t)
			holder := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
			waiter := locker(t, tp.client(t, name), redislock.WithPrefix(prefix))
			ctx := t.Context()
			le, err := holder.TryAcquire(ctx, "k", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan error, 1)
			go func() {
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				w, err := lock.Acquire(wctx, waiter, "k", time.Minute)
				if err == nil {
					err = w.Release(ctx)
				}
				got <- err
			}()
			channel := prefix + "{k}"
			waitFor(t, "the waiter subscribed", 5*time.Second, func() bool { return tp.subscribers(t, channel) == 1 })
			if tp.kill(t, name, conn.pubsub) != 1 {
				t.Fatal("want exactly one subscription connection to kill")
			}
			waitFor(t, "the waiter subscribed again", 5*time.Second, func() bool {
				return tp.subscribers(t, channel) == 1 && len(tp.conns(t, name)) > 0
			})
			released := time.Now()
			if err := le.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-got; err != nil {
				t.Fatalf("the waiter after its subscription was killed: %v", err)
			}
			if d := time.Since(released); d > time.Second {
				t.Errorf("the waiter took the key %v after the release", d)
			}
		})
	}
}

// TestWaitCancelled checks that a Subscription honours its context and its
// Close, and that closing the Locker wakes its waiters, who then poll.
func TestWaitCancelled(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			noLeak(t)
			prefix := tp.testPrefix(t)
			holder := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
			waiter := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
			ctx := t.Context()
			le, err := holder.TryAcquire(ctx, "k", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			cancelled, cancel := context.WithCancel(ctx)
			cancel()
			if sub, err := waiter.Subscribe(cancelled, "k"); !errors.Is(err, context.Canceled) || sub != nil {
				t.Errorf("Subscribe with a cancelled context: (%v, %v), want context.Canceled", sub, err)
			}
			sub, err := waiter.Subscribe(ctx, "k")
			if err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithCancel(ctx)
			time.AfterFunc(50*time.Millisecond, cancel)
			start := time.Now()
			if err := sub.Wait(wctx, nil); !errors.Is(err, context.Canceled) {
				t.Errorf("Wait cancelled after 50ms: %v, want context.Canceled", err)
			}
			if d := time.Since(start); d > 50*time.Millisecond+conformance.SchedulingSlack {
				t.Errorf("Wait returned %v after it started, cancelled at 50ms", d)
			}
			if err := sub.Close(); err != nil {
				t.Fatal(err)
			}
			if err := sub.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if err := sub.Wait(ctx, nil); err == nil {
				t.Errorf("Wait on a closed subscription returned nil, want an error")
			}

			// Closing the Locker wakes a waiting Acquire, which goes on by
			// polling (the client stays open) and takes the key once free.
			got := make(chan error, 1)
			go func() {
				w, err := lock.Acquire(ctx, waiter, "k", time.Minute)
				if err == nil {
					err = w.Release(ctx)
				}
				got <- err
			}()
			waitFor(t, "the waiter subscribed", 5*time.Second, func() bool { return tp.subscribers(t, prefix+"{k}") == 1 })
			if err := waiter.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := waiter.Subscribe(ctx, "k"); !errors.Is(err, redislock.ErrClosed) {
				t.Errorf("Subscribe after Close: %v, want ErrClosed", err)
			}
			waitFor(t, "the closed Locker unsubscribed", 5*time.Second, func() bool { return tp.subscribers(t, prefix+"{k}") == 0 })
			if err := le.Release(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-got:
				if err != nil {
					t.Fatalf("Acquire on a Locker closed while it waited: %v", err)
				}
			case <-time.After(lock.DefaultMaxBackoff + conformance.SchedulingSlack + time.Second):
				t.Fatal("Acquire on a closed Locker did not take the released key by polling")
			}
		})
	}
}

// TestOneSubscriptionConnection has many waiters on many keys share one
// subscription connection per server, and unsubscribe each channel after its
// last waiter.
func TestOneSubscriptionConnection(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			noLeak(t)
			name := uniqueName(t)
			prefix := tp.testPrefix(t)
			holder := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
			waiter := locker(t, tp.client(t, name), redislock.WithPrefix(prefix))
			ctx := t.Context()
			const keys, perKey = 12, 3
			leases := make([]lock.Lease, keys)
			for i := range leases {
				var err error
				if leases[i], err = holder.TryAcquire(ctx, "k"+itoa(uint64(i)), time.Minute); err != nil {
					t.Fatal(err)
				}
			}
			got := make(chan error, keys*perKey)
			for i := range keys * perKey {
				go func() {
					w, err := lock.Acquire(ctx, waiter, "k"+itoa(uint64(i%keys)), time.Minute)
					if err == nil {
						err = w.Release(ctx)
					}
					got <- err
				}()
			}
			for i := range keys {
				waitFor(t, "waiters subscribed", 5*time.Second, func() bool { return tp.subscribers(t, prefix+"{k"+itoa(uint64(i))+"}") == 1 })
			}
			subs := 0
			for _, cn := range tp.conns(t, name) {
				if cn.pubsub() {
					subs++
				}
			}
			maxSubs := 1
			if tp.cluster {
				maxSubs = len(tp.nodes(t))
			}
			if subs < 1 || subs > maxSubs {
				t.Errorf("%d waiters on %d keys use %d subscription connections, want 1 per server (at most %d)", keys*perKey, keys, subs, maxSubs)
			}
			for _, le := range leases {
				if err := le.Release(ctx); err != nil {
					t.Fatal(err)
				}
			}
			for range keys * perKey {
				if err := <-got; err != nil {
					t.Fatalf("waiter: %v", err)
				}
			}
			for i := range keys {
				waitFor(t, "channels unsubscribed after the last waiter", 5*time.Second, func() bool {
					return tp.subscribers(t, prefix+"{k"+itoa(uint64(i))+"}") == 0
				})
			}
		})
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

// TestNoMissedWakeUps hands one key around many goroutines on several
// Lockers with a TTL far longer than the test's deadline: a single missed
// wake-up would leave a waiter asleep until the holder's TTL, past the
// deadline.
func TestNoMissedWakeUps(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			noLeak(t)
			prefix := tp.testPrefix(t)
			const lockers, perLocker, rounds = 4, 3, 25
			var takes atomic.Int64
			ls := make([]*redislock.Locker, lockers)
			for i := range ls {
				c := tp.client(t, "")
				c.AddHook(countHook{&takes})
				ls[i] = locker(t, c, redislock.WithPrefix(prefix))
			}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			var (
				wg   sync.WaitGroup
				held atomic.Int32
				errs = make(chan error, lockers*perLocker)
			)
			for i := range lockers * perLocker {
				wg.Go(func() {
					for range rounds {
						le, err := lock.Acquire(ctx, ls[i%lockers], "k", time.Minute)
						if err != nil {
							errs <- err
							return
						}
						if held.Add(1) != 1 {
							errs <- errors.New("two holders at once")
						}
						held.Add(-1)
						if err := le.Release(ctx); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("hand-off under contention: %v", err)
			}
			t.Logf("%d hand-offs took %d commands", lockers*perLocker*rounds, takes.Load())
		})
	}
}
