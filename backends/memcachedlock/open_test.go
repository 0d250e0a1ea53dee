package memcachedlock_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/internal/testenv"
)

func TestOpen(t *testing.T) {
	addr := testenv.MemcachedAddr(t)
	key := testKey(t, "k")
	plain, err := lock.Open(t.Context(), "memcached://"+addr)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer plain.Close()
	le := take(t, plain, key, time.Minute)

	// Options reach the client and the Locker: another prefix is another
	// namespace, so the same key is free there.
	tuned, err := lock.Open(t.Context(), "MEMCACHED://"+addr+","+addr+"/?timeout=3s&max_idle_conns=4&prefix="+testPrefix(t))
	if err != nil {
		t.Fatalf("Open with options: %v", err)
	}
	le2 := take(t, tuned, key, time.Minute)
	refused(t, plain, key, "the default prefix still holds")
	for _, l := range []lock.Lease{le, le2} {
		if err := l.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if err := tuned.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := tuned.TryAcquire(t.Context(), key, time.Minute); !errors.Is(err, memcachedlock.ErrClosed) {
		t.Errorf("TryAcquire after Close of an opened Locker: got %v, want ErrClosed", err)
	}
}

func TestOpenInvalidURL(t *testing.T) {
	for _, raw := range []string{
		"memcached://",
		"memcached:///",
		"memcached://user:s3cret@127.0.0.1:11211",
		"memcached://127.0.0.1",
		"memcached://127.0.0.1:0",
		"memcached://127.0.0.1:99999",
		"memcached://:11211",
		"memcached://127.0.0.1:11211,",
		"memcached://127.0.0.1:11211/db",
		"memcached://127.0.0.1:11211#frag",
		"memcached:127.0.0.1:11211",
		"memcached://127.0.0.1:11211?bogus=1",
		"memcached://127.0.0.1:11211?timeout=-1s",
		"memcached://127.0.0.1:11211?timeout=soon",
		"memcached://127.0.0.1:11211?timeout=1s&timeout=2s",
		"memcached://127.0.0.1:11211?max_idle_conns=0",
		"memcached://127.0.0.1:11211?prefix=a%20b",
		"memcached://127.0.0.1:11211?prefix=" + strings.Repeat("p", 201),
		"memcached://127.0.0.1:11211?%zz",
	} {
		b, err := lock.Open(t.Context(), raw)
		if err == nil {
			_ = b.Close()
			t.Errorf("Open(%q) succeeded, want an error", raw)
			continue
		}
		if !errors.Is(err, lock.ErrInvalidURL) {
			t.Errorf("Open(%q): %v does not match lock.ErrInvalidURL", raw, err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Open(%q): the error shows the password: %v", raw, err)
		}
	}
}
