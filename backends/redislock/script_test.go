package redislock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

// TestScriptsRepeatable runs each script twice with the same arguments, as
// go-redis does when a connection breaks after a command was sent: the
// repeat must report what the first run did, never a lease that is not held
// or a release that did not happen.
func TestScriptsRepeatable(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
	defer c.Close()
	ctx := t.Context()
	k := keysFor(randomPrefix(), t.Name())
	defer c.Del(context.WithoutCancel(ctx), k.lock, k.record(), k.counter)

	take := func(nonce string) any {
		t.Helper()
		res, err := takeScript.Run(ctx, c, []string{k.lock, k.counter}, nonce, 60000).Result()
		if err != nil {
			t.Fatalf("take: %v", err)
		}
		return res
	}
	value, ok := take("n1").(string)
	first, nonce, _ := strings.Cut(value, ":")
	if !ok || nonce != "n1" {
		t.Fatalf("take of a free key answered %v, want the value <token>:n1", value)
	}
	if again := take("n1"); again != value {
		t.Fatalf("take, then the same take again: %v then %v, want the same value twice", value, again)
	}
	other, _ := take("n2").([]any)
	if len(other) != 3 || other[1] != first || other[2] != "n1" {
		t.Fatalf("another take of the held key: %v, want {PTTL, %v, n1}", other, first)
	}
	if pttl, _ := other[0].(int64); pttl <= 0 || pttl > 60000 {
		t.Fatalf("another take of the held key reported PTTL %v, want (0, 60000]", other[0])
	}
	release := func() int64 {
		t.Helper()
		n, err := releaseScript.Run(ctx, c, []string{k.lock, k.lock + ":e:n1"}, value).Int64()
		if err != nil {
			t.Fatalf("release: %v", err)
		}
		return n
	}
	if a, b := release(), release(); a != 1 || b != 1 {
		t.Fatalf("release, then the same release again: %d then %d, want 1 and 1", a, b)
	}
	if n, _ := refreshScript.Run(ctx, c, []string{k.lock}, value, 60000).Int64(); n != 0 {
		t.Fatalf("refresh after release = %d, want 0", n)
	}
	if pttl, err := c.PTTL(ctx, k.lock+":e:n1").Result(); err != nil || pttl <= 0 || pttl > 5*time.Second {
		t.Fatalf("the release's marker lives %v (%v), want (0, 5s]", pttl, err)
	}
	v3, ok := take("n3").(string)
	next, _, _ := strings.Cut(v3, ":")
	if !ok {
		t.Fatalf("take after a release: %v, want it taken", v3)
	}
	t1, _ := strconv.ParseUint(first, 10, 64)
	t3, _ := strconv.ParseUint(next, 10, 64)
	if t3 <= t1 {
		t.Fatalf("token after release %d, want greater than %d", t3, t1)
	}
	// The old lease's release, repeated, still finds its marker, and does
	// not touch the new holder.
	if n := release(); n != 1 {
		t.Fatalf("repeated release after another take = %d, want 1 (its marker)", n)
	}
	if v, _ := c.Get(ctx, k.lock).Result(); v != v3 {
		t.Fatalf("after the old lease's repeated release the lock holds %q, want the new holder's %q", v, v3)
	}
	// A release of a lease that never released (expired, say) finds no
	// marker of its own.
	if n, _ := releaseScript.Run(ctx, c, []string{k.lock, k.lock + ":e:n2"}, first+":n2").Int64(); n != 0 {
		t.Fatalf("stale release without a marker = %d, want 0", n)
	}

	complete := func() int64 {
		t.Helper()
		n, err := completeScript.Run(ctx, c, []string{k.lock, k.record(), k.lock + ":e:n3"}, v3, "rec", 60000).Int64()
		if err != nil {
			t.Fatalf("complete: %v", err)
		}
		return n
	}
	if a, b := complete(), complete(); a != 1 || b != 1 {
		t.Fatalf("complete, then the same complete again: %d then %d, want 1 and 1", a, b)
	}
	res, err := claimScript.Run(ctx, c, []string{k.lock, k.counter, k.record()}, "n4", 60000).Slice()
	if err != nil || len(res) != 1 || res[0] != "rec" {
		t.Fatalf("claim after complete: %v, %v; want {rec}", res, err)
	}
}

// randomPrefix returns a key prefix no other test run uses.
func randomPrefix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "idemlock-test:" + hex.EncodeToString(b[:]) + ":"
}

// TestTokens checks the token scheme on the server: a token is at least the
// server's time in microseconds, follows the slot's counter when that is
// ahead, and keeps increasing when the counter is lost.
func TestTokens(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
	defer c.Close()
	ctx := t.Context()
	prefix := randomPrefix()
	l, err := New(c, WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	k := keysFor(prefix, "k")
	defer c.Del(context.WithoutCancel(ctx), k.lock, k.counter)

	take := func() uint64 {
		t.Helper()
		le, err := l.TryAcquire(ctx, "k", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
		return le.Token()
	}
	now, err := c.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	first := take()
	if floor := uint64(now.UnixMicro()); first < floor {
		t.Fatalf("token %d is below the server's time %d µs", first, floor)
	}
	if got, _ := c.Get(ctx, k.counter).Uint64(); got != first {
		t.Fatalf("the slot counter %q holds %d, want the last token %d", k.counter, got, first)
	}
	// A lost counter: the time floor keeps tokens increasing.
	if err := c.Del(ctx, k.counter).Err(); err != nil {
		t.Fatal(err)
	}
	second := take()
	if second <= first {
		t.Fatalf("token %d after the counter was lost, want greater than %d", second, first)
	}
	// A counter ahead of the clock (a server whose clock stepped back):
	// tokens follow the counter.
	ahead := second + 1_000_000_000
	if err := c.Set(ctx, k.counter, ahead, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if third := take(); third != ahead+1 {
		t.Fatalf("token %d with the counter at %d, want %d", third, ahead, ahead+1)
	}
	if ttl, _ := c.PTTL(ctx, k.counter).Result(); ttl != -1 {
		t.Fatalf("the counter has TTL %v, want none", ttl)
	}
}

// TestTimeDigits checks the take script's conversion of TIME's reply to
// microseconds, padding included, with chosen times.
func TestTimeDigits(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
	defer c.Close()
	s := newScript("local t = {ARGV[1], ARGV[2]}\n" + timeDigits + "return s")
	for _, tc := range []struct{ sec, usec, want string }{
		{"1795739426", "0", "1795739426000000"},
		{"1795739426", "7", "1795739426000007"},
		{"1795739426", "12345", "1795739426012345"},
		{"1795739426", "99999", "1795739426099999"},
		{"1795739426", "100000", "1795739426100000"},
		{"1795739426", "999999", "1795739426999999"},
	} {
		got, err := s.Run(t.Context(), c, nil, tc.sec, tc.usec).Text()
		if err != nil || got != tc.want {
			t.Errorf("TIME {%s, %s} as µs = %q (%v), want %q", tc.sec, tc.usec, got, err, tc.want)
		}
	}
}

// TestCounterStep checks the take script's counter logic with chosen
// counters and times: the token is max(counter + 1, time), and the counter
// ends up holding it.
func TestCounterStep(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr(t)})
	defer c.Close()
	ctx := t.Context()
	counter := keysFor(randomPrefix(), t.Name()).counter
	defer c.Del(context.WithoutCancel(ctx), counter)
	s := newScript("local s = ARGV[1]\n" + counterStep + "return s")
	const now = "1795739426123456"
	for _, tc := range []struct {
		name, counter, want string
	}{
		{"no counter", "", now},
		{"counter behind", "1795739426123455", now},
		{"counter far behind, shorter", "99999999", now},
		{"counter equal", now, "1795739426123457"},
		{"counter ahead", "1795739427000000", "1795739427000001"},
		{"counter ahead, longer", "17957394260000000", "17957394260000001"},
		{"counter at 2^53", "9007199254740992", "9007199254740993"},
		{"counter ending in 9s", "1795739429999999", "1795739430000000"},
		{"counter all 9s", "99999999999999999", "100000000000000000"},
		{"counter near 2^64", "18446744073709551614", "18446744073709551615"},
		{"counter not a number", "garbage-garbage!", now},
		{"counter not a number, longer", "garbage-garbage-garbage", now},
	} {
		if tc.counter == "" {
			c.Del(ctx, counter)
		} else if err := c.Set(ctx, counter, tc.counter, 0).Err(); err != nil {
			t.Fatal(err)
		}
		got, err := s.Run(ctx, c, []string{"unused", counter}, now).Text()
		if err != nil || got != tc.want {
			t.Errorf("%s: token %q (%v), want %q", tc.name, got, err, tc.want)
		}
		if stored, _ := c.Get(ctx, counter).Result(); stored != tc.want {
			t.Errorf("%s: the counter holds %q, want %q", tc.name, stored, tc.want)
		}
	}
}

// TestShardedScripts checks that the Cluster variants of the release and
// complete scripts announce on the shard (SPUBLISH) and the others with
// PUBLISH.
func TestShardedScripts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		s        *script
		cmd, not string
	}{
		{"release", releaseScript, "'PUBLISH'", "'SPUBLISH'"},
		{"complete", completeScript, "'PUBLISH'", "'SPUBLISH'"},
		{"release (Cluster)", releaseScriptSharded, "'SPUBLISH'", "'PUBLISH'"},
		{"complete (Cluster)", completeScriptSharded, "'SPUBLISH'", "'PUBLISH'"},
	} {
		if !strings.Contains(tc.s.src, "redis.call("+tc.cmd) || strings.Contains(tc.s.src, "redis.call("+tc.not) {
			t.Errorf("%s script does not announce with %s alone:\n%s", tc.name, tc.cmd, tc.s.src)
		}
	}
}
