package redislock_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

func TestSchemesRegistered(t *testing.T) {
	have := map[string]bool{}
	for _, s := range lock.Schemes() {
		have[s] = true
	}
	for _, s := range redislock.Schemes {
		if !have[s] {
			t.Errorf("scheme %q is not registered with lock.Open", s)
		}
	}
}

// TestOpen opens real servers by URL, checks that the Locker works, uses the
// prefix from the URL, and owns (closes) its client.
func TestOpen(t *testing.T) {
	prefix := single.testPrefix(t)
	testenv.CheckQueueURL(t, "redis://"+testenv.RedisAddr(t)+"/0?key_prefix="+url.QueryEscape(prefix), "queue")
	seeds := testenv.RedisClusterAddrs(t)
	clusterPrefix := cluster.testPrefix(t)
	for _, tc := range []struct {
		name, url, prefix string
		tp                topology
	}{
		{"single", "redis://" + testenv.RedisAddr(t) + "/0?key_prefix=" + url.QueryEscape(prefix) + "&dial_timeout=2s", prefix, single},
		{"cluster host list", "redis+cluster://" + strings.Join(seeds, ",") + "/?key_prefix=" + url.QueryEscape(clusterPrefix), clusterPrefix, cluster},
		{"cluster addr params", "REDIS+CLUSTER://" + seeds[0] + "?addr=" + seeds[1] + "&key_prefix=" + url.QueryEscape(clusterPrefix), clusterPrefix, cluster},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeak(t)
			ctx := t.Context()
			b, err := lock.Open(ctx, tc.url)
			if err != nil {
				t.Fatalf("Open(%q): %v", tc.url, err)
			}
			l, ok := b.(*redislock.Locker)
			if !ok {
				t.Fatalf("Open returned a %T", b)
			}
			le, err := l.TryAcquire(ctx, "k", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			admin := tc.tp.client(t, "")
			if n, err := admin.Exists(ctx, tc.prefix+"{k}").Result(); err != nil || n != 1 {
				t.Errorf("the lock is not under the URL's key_prefix: EXISTS %q = %d, %v", tc.prefix+"{k}", n, err)
			}
			if err := le.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if err := b.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := b.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if _, err := l.TryAcquire(ctx, "k", time.Minute); !errors.Is(err, redis.ErrClosed) {
				t.Errorf("TryAcquire after Close of an opened Locker: %v, want the client closed", err)
			}
		})
	}
}

func TestOpenInvalid(t *testing.T) {
	ctx := t.Context()
	for _, raw := range []string{
		"redis://h:1,h:2",                 // several hosts for a single node
		"redis://h:1/notanumber",          // bad database
		"redis://h:1/1/2",                 // bad path
		"redis://h:1?bogus=1",             // unknown option
		"redis://user:s3cret@h:1?bogus=1", // …and the password must not leak
		"redis://h:1?key_prefix=a%7Bb",    // '{' in the prefix
		"redis://h:1?context_timeout_enabled=perhaps",
		"redis+cluster://h:1/3",    // Cluster has no databases
		"redis+cluster://h:1,,h:2", // empty host
		"redis+sentinel://h:1",     // no master_name
		"redis+sentinel://h:1?master_name=m&route_randomly=true",
		"redis+cluster:opaque",
	} {
		b, err := lock.Open(ctx, raw)
		if err == nil {
			_ = b.Close()
			t.Errorf("Open(%q) succeeded, want an error", raw)
			continue
		}
		if !errors.Is(err, lock.ErrInvalidURL) {
			t.Errorf("Open(%q): %v, want an error matching ErrInvalidURL", raw, err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Open(%q): the error %q shows the password", raw, err)
		}
	}
}
