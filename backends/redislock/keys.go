package redislock

import (
	"crypto/sha256"
	"encoding/base64"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
)

// Key layout. Every Redis key and channel a lock uses is
//
//	<prefix>{<tag>}         the lock itself (a string "<token>:<nonce>"),
//	                        and the pub/sub channel its release is announced on
//	<prefix>{<tag>}:r       the idempotency record stored by Complete
//	<prefix>{<tag>}:e:<n>   the 5 s marker of the release or completion of
//	                        the lease with nonce <n>
//	<prefix>{%!<n>}         the fencing counter of one Cluster hash slot
//
// where <tag> is the user's key with '%' written as "%25" and '}' as "%7D"
// (so the hash tag always ends where this package ends it), or, when that is
// longer than [maxTagLen] bytes, "%#" followed by the unpadded base64url
// SHA-256 of the key. An escaped key never contains "%#" or "%!" (a '%' is
// always followed by "25" or "7D"), so hashed keys, escaped keys and
// counters can never meet. The counter tag "%!<n>" is chosen so that it
// hashes to the same slot as the lock's tag: every key a script touches is
// in one slot, as Redis Cluster requires.

// maxTagLen is the longest escaped key kept readable inside the hash tag;
// longer keys are hashed with SHA-256.
const maxTagLen = 128

// numSlots is the number of Redis Cluster hash slots.
const numSlots = 16384

// keys are the Redis names one lock key maps to.
type keys struct {
	lock    string // the lock, also the channel its releases are published on
	counter string // the fencing counter of the lock's hash slot
}

// record returns the name of the idempotency record of the lock.
func (k keys) record() string { return recordKey(k.lock) }

// recordKey returns the name of the idempotency record of the lock named
// lock.
func recordKey(lock string) string { return lock + ":r" }

// tag returns the hash tag for key: escaped, or hashed when long.
func tag(key string) string {
	if n := escapedLen(key); n <= maxTagLen {
		if n == len(key) {
			return key
		}
		var b strings.Builder
		b.Grow(n)
		for i := 0; i < len(key); i++ {
			switch c := key[i]; c {
			case '%':
				b.WriteString("%25")
			case '}':
				b.WriteString("%7D")
			default:
				b.WriteByte(c)
			}
		}
		return b.String()
	}
	sum := sha256.Sum256([]byte(key))
	return "%#" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// escapedLen returns the length of key once escaped.
func escapedLen(key string) int {
	n := len(key)
	for i := 0; i < len(key); i++ {
		if key[i] == '%' || key[i] == '}' {
			n += 2
		}
	}
	return n
}

// keysFor returns the Redis names of key under prefix.
func keysFor(prefix, key string) keys {
	t := tag(key)
	return keys{
		lock:    prefix + "{" + t + "}",
		counter: prefix + "{" + slotTags()[slot(t)] + "}",
	}
}

// names returns what one take of key needs, in one allocation: the Redis
// names of the lock, of its slot's fencing counter and, when withRecord is
// set, of its idempotency record; and a new random nonce.
func (l *Locker) names(key string, withRecord bool) (lock, counter, record, nonce string) {
	t := tag(key)
	ct := slotTags()[slot(t)]
	var nb [13]byte // 64 random bits in base 36
	n := strconv.AppendUint(nb[:0], rand.Uint64(), 36)
	var b strings.Builder
	b.Grow(2*len(l.prefix) + len(t) + len(ct) + 6 + len(n))
	b.WriteString(l.prefix)
	b.WriteByte('{')
	b.WriteString(t)
	b.WriteByte('}')
	end := b.Len()
	if withRecord {
		b.WriteString(":r") // recordKey
	}
	rend := b.Len()
	b.WriteString(l.prefix)
	b.WriteByte('{')
	b.WriteString(ct)
	b.WriteByte('}')
	cend := b.Len()
	b.Write(n)
	s := b.String()
	lock, counter, nonce = s[:end], s[rend:cend], s[cend:]
	if withRecord {
		record = s[:rend]
	}
	return lock, counter, record, nonce
}

// slot returns the Redis Cluster hash slot of a key whose hash tag is t.
func slot(t string) uint16 { return crc16(t) % numSlots }

// slotTags returns, for every hash slot, a counter tag "%!<n>" in that slot:
// the first n (base 36) that lands there. The table is computed once, the
// same in every process, and never changes.
var slotTags = sync.OnceValue(func() *[numSlots]string {
	var tags [numSlots]string
	left := numSlots
	for n := uint64(0); left > 0; n++ {
		t := "%!" + strconv.FormatUint(n, 36)
		if s := slot(t); tags[s] == "" {
			tags[s] = t
			left--
		}
	}
	return &tags
})

// crc16 is the CRC-16/XMODEM checksum Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	tab := crcTable()
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc = crc<<8 ^ tab[byte(crc>>8)^s[i]]
	}
	return crc
}

var crcTable = sync.OnceValue(func() *[256]uint16 {
	var tab [256]uint16
	for i := range tab {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		tab[i] = c
	}
	return &tab
})
