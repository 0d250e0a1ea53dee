package memcachedlock

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash/fnv"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
)

// legalItem reports whether memcached accepts name as a key.
func legalItem(name string) bool {
	if len(name) == 0 || len(name) > maxKeyLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] <= ' ' || name[i] == 0x7f {
			return false
		}
	}
	return true
}

func TestLockKeyLegalAndInjective(t *testing.T) {
	long := strings.Repeat("x", 300)
	keys := []string{
		"a", "A", "a b", " a", "a ", "a\n", "a\r\n", "a\tb", "a\x00b", "a\x00c", "\x00", "\x01", "\x7f", "\u0080",
		"é", "e\u0301", "日本語", "🔒 lock", "\u200b", "a/b", "a%20b", "%", "h", "r", "l:", "ra", "ha",
		long[:236], long[:237], long[:238], long[:250], long, long + "a",
		strings.Repeat("y", lock.MaxKeyLen), strings.Repeat("日", lock.MaxKeyLen/3),
	}
	// A raw key spelled like another key's hashed form must not meet it.
	sum := sha256.Sum256([]byte(long))
	keys = append(keys, "h"+base64.RawURLEncoding.EncodeToString(sum[:]))
	for b := range 256 {
		keys = append(keys, "byte"+string([]byte{byte(b)}))
	}
	for _, prefix := range []string{DefaultPrefix, "", strings.Repeat("p", maxPrefixLen)} {
		l := &Locker{prefix: prefix}
		seen := map[string]string{}
		for _, k := range keys {
			name := l.lockKey(k)
			if !legalItem(name) {
				t.Errorf("prefix %q: key %q gives item name %q (%d bytes), which memcached rejects", prefix, k, name, len(name))
			}
			if !strings.HasPrefix(name, prefix+kindLockItem) {
				t.Errorf("prefix %q: item name %q does not start with the prefix and kind", prefix, name)
			}
			if other, dup := seen[name]; dup {
				t.Errorf("prefix %q: keys %q and %q share item %q", prefix, other, k, name)
			}
			seen[name] = k
			if c := l.counterKey(k); !legalItem(c) || c == name {
				t.Errorf("prefix %q: counter item %q of key %q is illegal or equals the lock item", prefix, c, k)
			}
		}
	}
}

func TestLockKeyForms(t *testing.T) {
	l := &Locker{prefix: DefaultPrefix} // default prefix "idemlock:" + "l:" + marker = 12 bytes
	fits := strings.Repeat("k", maxKeyLen-12)
	if got := l.lockKey(fits); got != "idemlock:l:r"+fits {
		t.Errorf("a plain key that just fits: got %q, want it verbatim after idemlock:l:r", got)
	}
	for _, k := range []string{fits + "k", "a b", "é", "a\x00"} {
		got := l.lockKey(k)
		sum := sha256.Sum256([]byte(k))
		if want := "idemlock:l:h" + base64.RawURLEncoding.EncodeToString(sum[:]); got != want {
			t.Errorf("lockKey(%.20q) = %q, want the hashed form %q", k, got, want)
		}
	}
}

// The stripe of a key is part of the storage format: Lockers of different
// versions must agree, or a key's tokens would come from two counters.
func TestStripePinned(t *testing.T) {
	for key, want := range map[string]uint64{"": 37, "a": 12, "invoice/42": 11, "日本語": 7} {
		if got := stripe(key); got != want {
			t.Errorf("stripe(%q) = %d, want %d: the storage format changed", key, got, want)
		}
	}
	for _, key := range []string{"", "a", "invoice/42", "日本語", strings.Repeat("z", 1000)} {
		h := fnv.New64a()
		_, _ = h.Write([]byte(key))
		if got, want := stripe(key), h.Sum64()%counterStripes; got != want {
			t.Errorf("stripe(%.20q) = %d, but FNV-1a (hash/fnv) modulo %d is %d", key, got, counterStripes, want)
		}
	}
	if got := (&Locker{prefix: DefaultPrefix}).counterKey("a"); got != "idemlock:t:12" {
		t.Errorf("counterKey(\"a\") = %q, want idemlock:t:12", got)
	}
}

func TestExpiry(t *testing.T) {
	for _, tc := range []struct {
		ttl     time.Duration
		exp     int32
		granted time.Duration
	}{
		{time.Nanosecond, 2, time.Second},
		{999 * time.Millisecond, 2, time.Second},
		{time.Second, 2, time.Second},
		{time.Second + time.Nanosecond, 3, 2 * time.Second},
		{1500 * time.Millisecond, 3, 2 * time.Second},
		{time.Minute, 61, time.Minute},
		{MaxTTL, maxRelativeExpiry, MaxTTL},
		{MaxTTL - time.Nanosecond, maxRelativeExpiry, MaxTTL},
	} {
		exp, granted, err := expiry(tc.ttl)
		if err != nil || exp != tc.exp || granted != tc.granted {
			t.Errorf("expiry(%v) = (%d, %v, %v), want (%d, %v, nil)", tc.ttl, exp, granted, err, tc.exp, tc.granted)
		}
	}
	for _, ttl := range []time.Duration{0, -time.Second, MaxTTL + time.Nanosecond, 31 * 24 * time.Hour, 1<<63 - 1} {
		_, _, err := expiry(ttl)
		var te *lock.TTLError
		if !errors.Is(err, lock.ErrInvalidTTL) || !errors.As(err, &te) {
			t.Errorf("expiry(%v): got %v, want a *lock.TTLError", ttl, err)
		}
	}
}

func TestOptionErrors(t *testing.T) {
	c := memcache.New("127.0.0.1:1") // never dialled
	for name, tc := range map[string]struct {
		client *memcache.Client
		opts   []Option
	}{
		"nil client":          {nil, nil},
		"prefix with a space": {c, []Option{WithPrefix("a b")}},
		"prefix too long":     {c, []Option{WithPrefix(strings.Repeat("p", maxPrefixLen+1))}},
		"non-ASCII prefix":    {c, []Option{WithPrefix("é")}},
		"tiny max item size":  {c, []Option{WithMaxItemSize(100)}},
	} {
		if l, err := New(tc.client, tc.opts...); !errors.Is(err, lock.ErrInvalidArgument) || l != nil {
			t.Errorf("%s: got (%v, %v), want an error matching lock.ErrInvalidArgument", name, l, err)
		}
	}
	if l, err := New(c, nil, WithPrefix("")); err != nil || l.prefix != "" {
		t.Errorf("a nil Option must be ignored and the empty prefix accepted; got err %v", err)
	}
}
