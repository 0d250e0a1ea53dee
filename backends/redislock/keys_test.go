package redislock

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/redis/go-redis/v9"
)

func TestCRC16(t *testing.T) {
	// The check value of CRC-16/XMODEM, and the slots Redis documents.
	if got := crc16("123456789"); got != 0x31C3 {
		t.Fatalf("crc16(123456789) = %#x, want 0x31c3", got)
	}
	if got := slot("abc"); got != 7638 {
		t.Fatalf("slot(abc) = %d, want 7638 (CLUSTER KEYSLOT abc)", got)
	}
}

func TestTag(t *testing.T) {
	long := strings.Repeat("x", maxTagLen)
	for _, tc := range []struct{ key, want string }{
		{"a", "a"},
		{"a b/c{d", "a b/c{d"},
		{"}", "%7D"},
		{"%", "%25"},
		{"%7D", "%257D"},
		{"{a}b", "{a%7Db"},
		{"%#x", "%25#x"},
		{"%!x", "%25!x"},
		{long, long},
	} {
		if got := tag(tc.key); got != tc.want {
			t.Errorf("tag(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	for _, key := range []string{long + "y", strings.Repeat("}", maxTagLen/3+1), strings.Repeat("y", lock.MaxKeyLen)} {
		got := tag(key)
		if !strings.HasPrefix(got, "%#") || len(got) != 2+43 {
			t.Errorf("tag of a %d-byte key (escaped %d) = %q, want %%# and a 43-byte SHA-256", len(key), escapedLen(key), got)
		}
	}
}

// FuzzTag checks that tags are injective, never contain '}', and that
// hashed, escaped and counter tags never meet.
func FuzzTag(f *testing.F) {
	for _, s := range []string{"a", "}", "%", "%7D", "%25", "{x}", strings.Repeat("%", 50), "%#abc", "%!1"} {
		f.Add(s, s+"}")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if a == "" || b == "" {
			return // not a valid key
		}
		ta, tb := tag(a), tag(b)
		if (a == b) != (ta == tb) {
			t.Fatalf("tag(%q) = %q, tag(%q) = %q: different keys must get different tags", a, ta, b, tb)
		}
		for _, tg := range []string{ta, tb} {
			if tg == "" || strings.Contains(tg, "}") {
				t.Fatalf("tag %q is empty or contains '}'", tg)
			}
			if strings.HasPrefix(tg, "%!") {
				t.Fatalf("tag %q looks like a counter tag", tg)
			}
			if !strings.HasPrefix(tg, "%#") && strings.Contains(tg, "%#") {
				t.Fatalf("escaped tag %q contains %%#", tg)
			}
		}
	})
}

func TestSlotTags(t *testing.T) {
	tags := slotTags()
	seen := map[string]bool{}
	for s, tg := range tags {
		if slot(tg) != uint16(s) {
			t.Fatalf("counter tag %q for slot %d is in slot %d", tg, s, slot(tg))
		}
		if !strings.HasPrefix(tg, "%!") || strings.ContainsAny(tg, "{}") || seen[tg] {
			t.Fatalf("counter tag %q for slot %d is malformed or repeated", tg, s)
		}
		seen[tg] = true
	}
}

func BenchmarkKeysFor(b *testing.B) {
	slotTags()
	for range b.N {
		keysFor(DefaultPrefix, "checkout/7f3c2a9e-4b1d-4e8a-9f00-0c2d1e3b4a5f")
	}
}

// TestSlotsMatchCluster asks the real Cluster which slot each key of a lock
// is in: the lock, its record and its counter must share one, computed as
// this package computes it.
func TestSlotsMatchCluster(t *testing.T) {
	addrs := testenv.RedisClusterAddrs(t)
	c := redis.NewClient(&redis.Options{Addr: addrs[0]})
	defer c.Close()
	ctx := t.Context()
	keysToCheck := []string{"a", "}", "{", "{x}", "a{b}c", "%", "%7D", "\x00", "日本語", "\xf0\x9f\x94\x92", strings.Repeat("z", 500)}
	for _, key := range keysToCheck {
		if !utf8.ValidString(key) {
			t.Fatalf("test key %q is not UTF-8", key)
		}
		k := keysFor("p:", key)
		want := int64(slot(tag(key)))
		for _, name := range []string{k.lock, k.record(), k.counter} {
			got, err := c.ClusterKeySlot(ctx, name).Result()
			if err != nil {
				t.Fatalf("CLUSTER KEYSLOT %q: %v", name, err)
			}
			if got != want {
				t.Errorf("key %q: Redis puts %q in slot %d, this package computed %d", key, name, got, want)
			}
		}
	}
}
