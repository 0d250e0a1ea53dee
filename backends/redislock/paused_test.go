package redislock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// TestServerPaused stops a private server (SIGSTOP: connections stay open,
// nothing answers), the way a hung server or a partition looks. With
// go-redis's ContextTimeoutEnabled every call must end at its context's
// deadline with an error, never a lease or a false ErrNotHeld; after the
// resume the lease is still held and works.
func TestServerPaused(t *testing.T) {
	for _, kind := range []testenv.Server{testenv.Redis, testenv.RedisCluster} {
		t.Run(string(kind), func(t *testing.T) { testServerPaused(t, kind) })
	}
}

func testServerPaused(t *testing.T, kind testenv.Server) {
	tp, in := private(t, kind)
	noLeak(t)
	prefix := tp.testPrefix(t)
	newClient := func() redis.UniversalClient {
		var c redis.UniversalClient
		if tp.cluster {
			c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: in.Addrs(), ContextTimeoutEnabled: true})
		} else {
			c = redis.NewClient(&redis.Options{Addr: in.Addr(), ContextTimeoutEnabled: true})
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	holderClient, waiterClient := newClient(), newClient()
	holder := locker(t, holderClient, redislock.WithPrefix(prefix))
	waiter := locker(t, waiterClient, redislock.WithPrefix(prefix))
	ctx := t.Context()
	le, err := holder.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// The waiter subscribes before the pause, so its Wait blocks on a
	// connection that stops answering.
	sub, err := waiter.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	// go-redis bounds the handshake of a new connection by its DialTimeout,
	// not by the context, and a ClusterClient loads COMMAND's table on its
	// first command, so the calls below must find all that done: the
	// waiter's client has run a command and is connected to every node, and
	// "another" is a key on the same node as "k", whose subscription
	// connection is open.
	if _, err := waiter.TryAcquire(ctx, "k", time.Minute); !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("TryAcquire of the held key: %v", err)
	}
	ping := func(ctx context.Context, c *redis.Client) error { return c.Ping(ctx).Err() }
	another := "another"
	if cc, ok := waiterClient.(*redis.ClusterClient); ok {
		if err := cc.ForEachMaster(ctx, ping); err != nil {
			t.Fatal(err)
		}
		node := func(key string) string {
			m, err := cc.MasterForKey(ctx, prefix+"{"+key+"}")
			if err != nil {
				t.Fatal(err)
			}
			return m.Options().Addr
		}
		for i := 0; node(another) != node("k"); i++ {
			another = "another" + itoa(uint64(i))
		}
	} else if err := ping(ctx, waiterClient.(*redis.Client)); err != nil {
		t.Fatal(err)
	}

	in.Pause(t)
	const deadline = 300 * time.Millisecond
	bound := deadline + conformance.SchedulingSlack
	within := func(what string, op func(ctx context.Context) error) error {
		t.Helper()
		dctx, cancel := context.WithTimeout(ctx, deadline)
		defer cancel()
		start := time.Now()
		err := op(dctx)
		if d := time.Since(start); d > bound {
			t.Errorf("%s on a paused server returned after %v, want within %v", what, d, bound)
		}
		if err == nil {
			t.Fatalf("%s on a paused server succeeded", what)
		}
		if errors.Is(err, lock.ErrNotHeld) {
			t.Fatalf("%s on a paused server reported ErrNotHeld for a lease that holds: %v", what, err)
		}
		return err
	}
	within("TryAcquire", func(ctx context.Context) error {
		le, err := waiter.TryAcquire(ctx, "other", time.Minute)
		if le != nil {
			t.Errorf("TryAcquire on a paused server returned a lease")
		}
		return err
	})
	within("Subscribe", func(ctx context.Context) error {
		s, err := waiter.Subscribe(ctx, another)
		if s != nil {
			_ = s.Close()
		}
		return err
	})
	if err := within("Wait", func(ctx context.Context) error { return sub.Wait(ctx, nil) }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a paused server: %v, want context.DeadlineExceeded", err)
	}
	within("Refresh", func(ctx context.Context) error { return le.Refresh(ctx, time.Minute) })
	within("Release", func(ctx context.Context) error { return le.Release(ctx) })
	in.Resume(t)

	// The release above may or may not have reached the server before the
	// pause ended; either way a second Release succeeds (the script
	// recognises its own marker) and the key is free afterwards.
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := le.Release(rctx); err != nil {
		t.Fatalf("Release after the resume: %v", err)
	}
	le2, err := waiter.TryAcquire(rctx, "k", time.Minute)
	if err != nil {
		t.Fatalf("TryAcquire after the resume and release: %v", err)
	}
	if le2.Token() <= le.Token() {
		t.Errorf("token %d after the resume, want greater than %d", le2.Token(), le.Token())
	}
	if err := le2.Release(rctx); err != nil {
		t.Fatal(err)
	}
}

// TestServerRestart restarts a private single node, which comes back empty
// (no persistence), as a crashed server or an unreplicated failover would:
// the lease is then reported lost, never held; a subscription recovers; and
// the next token is still greater although the slot counter was lost with
// the data (the server-time floor).
func TestServerRestart(t *testing.T) {
	tp, in := private(t, testenv.Redis)
	noLeak(t)
	prefix := tp.testPrefix(t)
	holder := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
	waiter := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
	ctx := t.Context()
	le, err := holder.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := waiter.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	in.Restart(t)
	if err := le.Refresh(ctx, time.Minute); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Refresh of a lease the restart wiped: %v, want ErrNotHeld", err)
	}
	if err := le.Release(ctx); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Release of a lease the restart wiped: %v, want ErrNotHeld", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := sub.Wait(wctx, nil); err != nil {
		t.Fatalf("Wait after its connection was lost to the restart: %v, want a wake-up", err)
	}
	le2, err := waiter.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatalf("TryAcquire after the restart: %v", err)
	}
	if le2.Token() <= le.Token() {
		t.Fatalf("token %d after a restart that lost the counter, want greater than %d", le2.Token(), le.Token())
	}
	// The re-subscribed subscription sees the next release.
	released := time.Now()
	if err := le2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sub.Wait(wctx, nil); err != nil {
		t.Fatalf("Wait for a release after the restart: %v", err)
	}
	if d := time.Since(released); d > 100*time.Millisecond+conformance.SchedulingSlack {
		t.Errorf("Wait returned %v after the release", d)
	}
}
