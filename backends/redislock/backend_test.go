package redislock_test

import (
	"bufio"
	"errors"
	"math"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/idempotency"
	"github.com/redis/go-redis/v9"
)

// Compile-time checks of the optional interfaces.
var (
	_ lock.Backend      = (*redislock.Locker)(nil)
	_ lock.Notifier     = (*redislock.Locker)(nil)
	_ idempotency.Store = (*redislock.Locker)(nil)
)

func TestInvalidConfiguration(t *testing.T) {
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer ring.Close()
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer c.Close()
	for _, tc := range []struct {
		name   string
		client redis.UniversalClient
		opts   []redislock.Option
	}{
		{"nil client", nil, nil},
		{"nil *redis.Client", (*redis.Client)(nil), nil},
		{"nil *redis.ClusterClient", (*redis.ClusterClient)(nil), nil},
		{"Ring", ring, nil},
		{"prefix with {", c, []redislock.Option{redislock.WithPrefix("a{")}},
		{"prefix with }", c, []redislock.Option{redislock.WithPrefix("}b")}},
		{"zero record size", c, []redislock.Option{redislock.WithMaxRecordSize(0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := redislock.New(tc.client, tc.opts...)
			if !errors.Is(err, lock.ErrInvalidArgument) || l != nil {
				t.Errorf("New: got (%v, %v), want an error matching ErrInvalidArgument", l, err)
			}
		})
	}
	// Every bad option is reported at once.
	_, err := redislock.New(c, redislock.WithPrefix("a{"), redislock.WithMaxRecordSize(-1))
	if err == nil || !strings.Contains(err.Error(), "a{") || !strings.Contains(err.Error(), "-1") {
		t.Errorf("New with two bad options: %v, want both named", err)
	}
}

func TestBadArguments(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			l := locker(t, tp.client(t, ""), redislock.WithPrefix(tp.testPrefix(t)))
			ctx := t.Context()
			if _, err := l.Subscribe(ctx, ""); !errors.Is(err, lock.ErrInvalidKey) {
				t.Errorf("Subscribe with an empty key: %v, want ErrInvalidKey", err)
			}
			//lint:ignore SA1012 a nil context is the bad input under test
			if _, err := l.Subscribe(nil, "k"); !errors.Is(err, lock.ErrInvalidArgument) { //nolint:staticcheck
				t.Errorf("Subscribe with a nil context: %v, want ErrInvalidArgument", err)
			}
			le, err := l.TryAcquire(ctx, "k", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			defer le.Release(ctx)
			if err := l.Complete(ctx, le, nil, 0); !errors.Is(err, lock.ErrInvalidTTL) {
				t.Errorf("Complete with retention 0: %v, want ErrInvalidTTL", err)
			}
			foreign, err := memlock.New().TryAcquire(ctx, "k", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Complete(ctx, foreign, nil, time.Minute); !errors.Is(err, lock.ErrInvalidArgument) {
				t.Errorf("Complete with a memlock lease: %v, want ErrInvalidArgument", err)
			}
			other := locker(t, tp.client(t, ""), redislock.WithPrefix(tp.testPrefix(t)))
			if err := other.Complete(ctx, le, nil, time.Minute); !errors.Is(err, lock.ErrInvalidArgument) {
				t.Errorf("Complete with another Locker's lease: %v, want ErrInvalidArgument", err)
			}
			if err := le.Refresh(ctx, time.Minute); err != nil {
				t.Errorf("the lease must be untouched by the refused calls: Refresh: %v", err)
			}
		})
	}
}

// TestLayout checks what a lease leaves on the server: the documented key
// under the prefix, its value, and a TTL rounded up to whole milliseconds.
func TestLayout(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			prefix := tp.testPrefix(t)
			c := tp.client(t, "")
			l := locker(t, c, redislock.WithPrefix(prefix))
			ctx := t.Context()
			const ttl = 10*time.Second + 500*time.Microsecond
			before := time.Now()
			le, err := l.TryAcquire(ctx, "a}b%c", ttl)
			after := time.Now()
			if err != nil {
				t.Fatal(err)
			}
			name := prefix + "{a%7Db%25c}"
			v, err := c.Get(ctx, name).Result()
			if err != nil {
				t.Fatalf("GET %q: %v", name, err)
			}
			if m := regexp.MustCompile(`^(\d+):[0-9a-z]+$`).FindStringSubmatch(v); m == nil || m[1] != strconv.FormatUint(le.Token(), 10) {
				t.Errorf("value of %q = %q, want \"%d:<nonce>\"", name, v, le.Token())
			}
			pttl, err := c.PTTL(ctx, name).Result()
			if err != nil {
				t.Fatal(err)
			}
			if pttl > 10001*time.Millisecond || pttl < 10001*time.Millisecond-time.Second {
				t.Errorf("PTTL = %v, want about 10.001s (the TTL rounded up to a millisecond)", pttl)
			}
			dl := le.(lock.Deadliner).Deadline()
			if dl.Before(before.Add(10001*time.Millisecond)) || dl.After(after.Add(10001*time.Millisecond)) {
				t.Errorf("Deadline is %v after the take was sent, want 10.001s", dl.Sub(before))
			}
			if err := le.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if n, _ := c.Exists(ctx, name).Result(); n != 0 {
				t.Errorf("after Release the lock %q still exists", name)
			}
			_, nonce, _ := strings.Cut(v, ":")
			if pttl, err := c.PTTL(ctx, name+":e:"+nonce).Result(); err != nil || pttl <= 0 || pttl > 5*time.Second {
				t.Errorf("the release's marker %s:e:<nonce> lives %v (%v), want (0, 5s]", name, pttl, err)
			}
			// An empty prefix is allowed; prefixes keep locks apart.
			bare := locker(t, c, redislock.WithPrefix(""))
			le1, err := bare.TryAcquire(ctx, prefix+"x", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			defer le1.Release(ctx)
			if n, _ := c.Exists(ctx, "{"+prefix+"x}").Result(); n != 1 {
				t.Errorf("with an empty prefix the key must be {%sx}", prefix)
			}
			le2, err := l.TryAcquire(ctx, prefix+"x", time.Minute)
			if err != nil {
				t.Fatalf("the same key under another prefix must be another lock: %v", err)
			}
			defer le2.Release(ctx)
		})
	}
}

func TestNotAcquiredError(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			prefix := tp.testPrefix(t)
			a := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
			b := locker(t, tp.client(t, ""), redislock.WithPrefix(prefix))
			ctx := t.Context()
			le, err := a.TryAcquire(ctx, "k", 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer le.Release(ctx)
			_, err = b.TryAcquire(ctx, "k", time.Second)
			var held *lock.NotAcquiredError
			if !errors.As(err, &held) {
				t.Fatalf("TryAcquire of a held key: %v, want a *lock.NotAcquiredError", err)
			}
			if held.Key != "k" || held.Version != le.Token() {
				t.Errorf("NotAcquiredError{Key: %q, Version: %d}, want k and the holder's token %d", held.Key, held.Version, le.Token())
			}
			if held.Remaining <= 25*time.Second || held.Remaining > 30*time.Second {
				t.Errorf("Remaining = %v, want the holder's PTTL (just under 30s)", held.Remaining)
			}
		})
	}
}

// TestRoundTrips counts the commands each operation sends with a go-redis
// hook, on both topologies.
func TestRoundTrips(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			var n atomic.Int64
			c := tp.client(t, "")
			c.AddHook(countHook{&n})
			l := locker(t, c, redislock.WithPrefix(tp.testPrefix(t)))
			ctx := t.Context()
			// Warm up: the first use of a script on a server may load it
			// (NOSCRIPT, then EVAL). Run every script on the servers of the
			// keys measured below: a hash tag is the key alone, so another
			// prefix gives other keys in the same slots.
			warmL := locker(t, c, redislock.WithPrefix(tp.testPrefix(t)))
			for _, key := range []string{"k", "c"} {
				warm, err := warmL.TryAcquire(ctx, key, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				_ = warm.Refresh(ctx, time.Minute)
				_, _ = warmL.TryAcquire(ctx, key, time.Minute)
				_ = warm.Release(ctx)
				le, _, _ := warmL.Claim(ctx, key, time.Minute)
				_ = warmL.Complete(ctx, le, []byte("x"), time.Minute)
				_, _, _ = warmL.Claim(ctx, key, time.Minute)
			}

			count := func(what string, want int64, op func() error) {
				t.Helper()
				before := n.Load()
				if err := op(); err != nil && !errors.Is(err, lock.ErrNotAcquired) {
					t.Fatalf("%s: %v", what, err)
				}
				if got := n.Load() - before; got != want {
					t.Errorf("%s took %d round trips, want %d", what, got, want)
				}
			}
			var le1 lock.Lease
			count("TryAcquire", 1, func() (err error) { le1, err = l.TryAcquire(ctx, "k", time.Minute); return err })
			count("TryAcquire of a held key", 1, func() error { _, err := l.TryAcquire(ctx, "k", time.Minute); return err })
			count("Refresh", 1, func() error { return le1.Refresh(ctx, time.Minute) })
			count("Release", 1, func() error { return le1.Release(ctx) })
			count("second Release", 0, func() error { _ = le1.Release(ctx); return nil })
			count("Claim", 1, func() (err error) { le1, _, err = l.Claim(ctx, "c", time.Minute); return err })
			count("Complete", 1, func() error { return l.Complete(ctx, le1, []byte("rec"), time.Minute) })
			count("Claim of a completed key (replay)", 1, func() error {
				le, rec, err := l.Claim(ctx, "c", time.Minute)
				if le != nil || string(rec) != "rec" {
					t.Errorf("Claim after Complete = (%v, %q), want the record", le, rec)
				}
				return err
			})
		})
	}
}

// TestCommandStats checks on the server, with INFO commandstats, that an
// uncontended take plus release is exactly two commands (two EVALSHA) and a
// replayed Claim one. Commands that scripts run inside count in
// commandstats too, so the test counts the script commands, and checks that
// no other command was sent besides those the scripts themselves run. Other
// clients may run commands meanwhile, so each count is the least of a few
// tries.
func TestCommandStats(t *testing.T) {
	admin := single.client(t, "")
	c := single.client(t, "")
	l := locker(t, c, redislock.WithPrefix(single.testPrefix(t)))
	ctx := t.Context()
	inScripts := map[string]bool{"get": true, "set": true, "time": true, "pttl": true, "pexpire": true, "publish": true, "del": true, "info": true}
	calls := func() (scripts, others int64) {
		t.Helper()
		info, err := admin.Info(ctx, "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(strings.NewReader(info))
		for sc.Scan() {
			name, stats, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "cmdstat_"), ":")
			if !ok || !strings.HasPrefix(sc.Text(), "cmdstat_") {
				continue
			}
			var n int64
			for _, f := range strings.Split(stats, ",") {
				if v, ok := strings.CutPrefix(f, "calls="); ok {
					n, _ = strconv.ParseInt(v, 10, 64)
				}
			}
			switch {
			case name == "evalsha" || name == "eval":
				scripts += n
			case !inScripts[name]:
				others += n
			}
		}
		return scripts, others
	}
	least := func(op func()) (scripts, others int64) {
		scripts, others = 1<<62, 1<<62
		for range 5 {
			s0, o0 := calls()
			op()
			s1, o1 := calls()
			scripts, others = min(scripts, s1-s0), min(others, o1-o0)
		}
		return scripts, others
	}
	le, err := l.TryAcquire(ctx, "warm", time.Minute) // loads the scripts, opens the connection
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Complete(ctx, le, []byte("done"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if s, o := least(func() {
		le, err := l.TryAcquire(ctx, "k", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}); s != 2 || o != 0 {
		t.Errorf("take + release ran %d script commands and %d others on the server, want 2 and 0", s, o)
	}
	if s, o := least(func() {
		if le, rec, err := l.Claim(ctx, "warm", time.Minute); err != nil || le != nil || string(rec) != "done" {
			t.Fatalf("Claim of a completed key = (%v, %q, %v), want its record", le, rec, err)
		}
	}); s != 1 || o != 0 {
		t.Errorf("a replayed Claim ran %d script commands and %d others on the server, want 1 and 0", s, o)
	}
}

// TestExtremeTTLs: a nanosecond rounds up to the server's millisecond, and
// the longest Duration is accepted as it is.
func TestExtremeTTLs(t *testing.T) {
	prefix := single.testPrefix(t)
	c := single.client(t, "")
	l := locker(t, c, redislock.WithPrefix(prefix))
	ctx := t.Context()
	le, err := l.TryAcquire(ctx, "tiny", time.Nanosecond)
	if err != nil {
		t.Fatal(err)
	}
	if pttl, _ := c.PTTL(ctx, prefix+"{tiny}").Result(); pttl > time.Millisecond {
		t.Errorf("PTTL of a 1ns lease = %v, want at most 1ms", pttl)
	}
	_ = le.Release(ctx) // it may well have expired already
	le, err = l.TryAcquire(ctx, "huge", time.Duration(math.MaxInt64))
	if err != nil {
		t.Fatalf("TryAcquire with the longest Duration: %v", err)
	}
	if dl := le.(lock.Deadliner).Deadline(); dl.Before(time.Now().Add(100 * 365 * 24 * time.Hour)) {
		t.Errorf("Deadline of the longest lease = %v, want centuries ahead", dl)
	}
	if err := le.Refresh(ctx, time.Duration(math.MaxInt64)); err != nil {
		t.Fatalf("Refresh with the longest Duration: %v", err)
	}
	if dl := le.(lock.Deadliner).Deadline(); dl.Before(time.Now().Add(100 * 365 * 24 * time.Hour)) {
		t.Errorf("Deadline after refreshing the longest lease = %v, want centuries ahead", dl)
	}
	// go-redis's PTTL would overflow a Duration here: ask for milliseconds.
	if ms, err := c.Do(ctx, "PTTL", prefix+"{huge}").Int64(); err != nil || ms < int64(math.MaxInt64/time.Millisecond)-60_000 {
		t.Errorf("PTTL of the longest lease = %dms (%v), want about %dms", ms, err, math.MaxInt64/time.Millisecond)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
