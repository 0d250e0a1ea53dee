package memcachedlock

import (
	"crypto/sha256"
	"encoding/base64"
	"strconv"
)

// Item name layout (part of the storage format: Lockers of different
// versions must agree on it, so it never changes):
//
//	<prefix>l:r<key>              lock item of a plain key that fits
//	<prefix>l:h<base64url(sha256)> lock item of any other key
//	<prefix>t:<stripe>            token counter, stripe 0..63 in decimal
const (
	kindLockItem    = "l:"
	kindCounterItem = "t:"
	markRaw         = 'r'
	markHashed      = 'h'
	// counterStripes is how many counters share the fencing tokens of all
	// keys. A key always maps to the same stripe, so its tokens increase;
	// changing this number would move keys between counters.
	counterStripes = 64
)

// lockKey returns the memcached key of key's lock item.
func (l *Locker) lockKey(key string) string {
	head := len(l.prefix) + len(kindLockItem) + 1
	if head+len(key) <= maxKeyLen && plainASCII(key) {
		b := make([]byte, 0, head+len(key))
		b = append(b, l.prefix...)
		b = append(b, kindLockItem...)
		b = append(b, markRaw)
		return string(append(b, key...))
	}
	sum := sha256.Sum256([]byte(key))
	b := make([]byte, 0, head+base64.RawURLEncoding.EncodedLen(len(sum)))
	b = append(b, l.prefix...)
	b = append(b, kindLockItem...)
	b = append(b, markHashed)
	return string(base64.RawURLEncoding.AppendEncode(b, sum[:]))
}

// counterKey returns the memcached key of the token counter key uses.
func (l *Locker) counterKey(key string) string {
	return l.prefix + kindCounterItem + strconv.Itoa(int(stripe(key)))
}

// stripe maps a key to its counter: FNV-1a, 64-bit, modulo counterStripes.
func stripe(key string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= prime
	}
	return h % counterStripes
}

// plainASCII reports whether s holds only bytes memcached accepts in a key
// and that read the same everywhere: printable ASCII other than space.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
