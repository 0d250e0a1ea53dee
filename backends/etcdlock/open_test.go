package etcdlock_test

import (
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/internal/testenv"
)

func TestParseURL(t *testing.T) {
	good := []struct {
		url       string
		endpoints []string
		dial      time.Duration
		opts      int
	}{
		{"etcd://127.0.0.1:2379", []string{"127.0.0.1:2379"}, etcdlock.DefaultDialTimeout, 0},
		{"etcd://127.0.0.1:2379/", []string{"127.0.0.1:2379"}, etcdlock.DefaultDialTimeout, 0},
		{"ETCD://a:1,b:2,c.example:3/?dial_timeout=2s", []string{"a:1", "b:2", "c.example:3"}, 2 * time.Second, 0},
		{"etcd://[::1]:2379", []string{"[::1]:2379"}, etcdlock.DefaultDialTimeout, 0},
		{"etcd://h:1/?prefix=app%2Flocks%2F&lease_pool=0&ttl_slack=0s&timeout=1s&max_record_size=10&retention_bucket=1m", []string{"h:1"}, etcdlock.DefaultDialTimeout, 6},
	}
	for _, tc := range good {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", tc.url, err)
		}
		cfg, opts, err := etcdlock.ParseURL(u)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.url, err)
			continue
		}
		if !slices.Equal(cfg.Endpoints, tc.endpoints) || cfg.DialTimeout != tc.dial || len(opts) != tc.opts {
			t.Errorf("ParseURL(%q) = endpoints %q, dial timeout %v, %d options; want %q, %v, %d", tc.url, cfg.Endpoints, cfg.DialTimeout, len(opts), tc.endpoints, tc.dial, tc.opts)
		}
	}
	for _, raw := range []string{
		"etcd://",
		"etcd:///",
		"etcd://h",
		"etcd://h:0",
		"etcd://h:99999",
		"etcd://h:1,",
		"etcd://:1",
		"etcd://h:1/path",
		"etcd://h:1/?unknown=1",
		"etcd://h:1/?prefix=a&prefix=b",
		"etcd://h:1/?dial_timeout=soon",
		"etcd://h:1/?dial_timeout=-1s",
		"etcd://h:1/?lease_pool=-1",
		"etcd://h:1/?ttl_slack=2h",
		"etcd://h:1/?max_record_size=0",
		"etcd://h:1/?retention_bucket=1ms",
		"etcd://h:1/#frag",
		"etcd://user:s3cret@h:1/",
		"etcd:h:1",
		"redis://h:1",
	} {
		u, err := url.Parse(raw)
		if err != nil {
			continue // rejected before it reaches the opener
		}
		_, _, err = etcdlock.ParseURL(u)
		if !errors.Is(err, lock.ErrInvalidURL) {
			t.Errorf("ParseURL(%q): %v, want an error matching ErrInvalidURL", raw, err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ParseURL(%q): the error shows the password: %v", raw, err)
		}
	}
}

func TestOpen(t *testing.T) {
	eps := testenv.EtcdEndpoints(t)
	ctx := t.Context()
	prefix := url.QueryEscape(testPrefix(t))
	testenv.CheckQueueURL(t, "etcd://"+strings.Join(eps, ",")+"/?prefix="+prefix, "queue")
	b, err := lock.Open(ctx, "etcd://"+strings.Join(eps, ",")+"/?prefix="+prefix+"&dial_timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(lock.Notifier); !ok {
		t.Errorf("the opened backend %T is not a lock.Notifier", b)
	}
	le, err := b.TryAcquire(ctx, "k", 5*time.Second)
	if err != nil {
		t.Fatal(err)
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
	if _, err := b.TryAcquire(ctx, "k", 5*time.Second); !errors.Is(err, etcdlock.ErrClosed) {
		t.Errorf("TryAcquire after Close: %v, want ErrClosed", err)
	}
	if _, err := lock.Open(ctx, "etcd://user:s3cret@"+eps[0]+"/"); !errors.Is(err, lock.ErrInvalidURL) || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Open with credentials: %v, want ErrInvalidURL without the password", err)
	}
}
