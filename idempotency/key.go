package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"unicode/utf8"
)

// MaxKeyLen is the longest idempotency key, in bytes, that [ParseKey]
// accepts (draft-ietf-httpapi-idempotency-key-header leaves the limit to the
// server; 255 is what the issue fixes and fits any UUID or ULID scheme).
const MaxKeyLen = 255

// MaxWorkerKeyLen is the longest key [Do] accepts. Worker keys are message
// ids or job names, not header values, so any non-empty UTF-8 string up to
// this length is allowed.
const MaxWorkerKeyLen = 4096

// ErrInvalidKey is matched by every error about an idempotency key that is
// rejected; the error is a [*KeyError].
var ErrInvalidKey = errors.New("idempotency: invalid key")

// KeyError describes an idempotency key that was rejected.
type KeyError struct {
	Reason string // why, for example "empty" or "a list of several values"
}

func (e *KeyError) Error() string { return "idempotency: invalid key: " + e.Reason }

// Unwrap makes errors.Is(err, ErrInvalidKey) true.
func (e *KeyError) Unwrap() error { return ErrInvalidKey }

// ParseKey parses one Idempotency-Key field value.
//
// Two forms are accepted: the Structured Field String the IETF draft
// specifies ("8e03978e-40d5-43e8-bc93-6894a57f9324", quoted, with \" and \\
// escapes), and the bare token most clients (Stripe's among them) send. The
// key is the unquoted value. It is rejected, with a [*KeyError], when it is:
//
//   - empty (including "");
//   - a list: a comma in a bare value, or anything after the closing quote;
//   - not printable ASCII: a bare key is visible ASCII (0x21–0x7E) only; a
//     quoted one may also contain spaces, as Structured Field Strings do;
//   - longer than [MaxKeyLen] bytes once unquoted.
//
// Several header lines are a list too; the middleware rejects them before
// calling ParseKey.
func ParseKey(v string) (string, error) {
	// net/http already trims optional whitespace around a field value; a
	// value that reaches us with it anyway is not trimmed into validity.
	if v == "" {
		return "", &KeyError{Reason: "empty"}
	}
	if v[0] != '"' {
		if len(v) > MaxKeyLen {
			return "", &KeyError{Reason: fmt.Sprintf("%d bytes, longer than %d", len(v), MaxKeyLen)}
		}
		for i := 0; i < len(v); i++ {
			switch c := v[i]; {
			case c == ',':
				return "", &KeyError{Reason: "a list of several values"}
			case c < 0x21 || c > 0x7e:
				return "", &KeyError{Reason: fmt.Sprintf("byte %#02x at offset %d is not visible ASCII", c, i)}
			}
		}
		return v, nil
	}
	// Structured Field String (RFC 8941 section 3.3.3).
	var buf []byte
	i := 1
	for ; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\':
			i++
			if i == len(v) || (v[i] != '"' && v[i] != '\\') {
				return "", &KeyError{Reason: "bad escape in quoted string"}
			}
			if buf == nil {
				buf = append(make([]byte, 0, len(v)), v[1:i-1]...)
			}
			buf = append(buf, v[i])
			continue
		case c == '"':
			goto closed
		case c < 0x20 || c > 0x7e:
			return "", &KeyError{Reason: fmt.Sprintf("byte %#02x at offset %d is not printable ASCII", c, i)}
		}
		if buf != nil {
			buf = append(buf, c)
		}
	}
	return "", &KeyError{Reason: "unterminated quoted string"}
closed:
	if i != len(v)-1 {
		return "", &KeyError{Reason: "a list of several values, or text after the quoted string"}
	}
	key := v[1:i]
	if buf != nil {
		key = string(buf)
	}
	switch {
	case key == "":
		return "", &KeyError{Reason: "empty"}
	case len(key) > MaxKeyLen:
		return "", &KeyError{Reason: fmt.Sprintf("%d bytes, longer than %d", len(key), MaxKeyLen)}
	}
	return key, nil
}

// validWorkerKey checks a key given to [Do].
func validWorkerKey(key string) error {
	switch {
	case key == "":
		return &KeyError{Reason: "empty"}
	case len(key) > MaxWorkerKeyLen:
		return &KeyError{Reason: fmt.Sprintf("%d bytes, longer than %d", len(key), MaxWorkerKeyLen)}
	case !utf8.ValidString(key):
		return &KeyError{Reason: "not valid UTF-8"}
	}
	return nil
}

// Domains separate the hashes this package computes, so that no hash of one
// kind can ever equal a hash of another. They are short: with one-byte
// length prefixes a typical storage key or fingerprint input fits in one or
// two SHA-256 blocks.
const (
	domainHTTPKey   = "idemlock1/hk"
	domainWorkerKey = "idemlock1/wk"
	domainHTTPFP    = "idemlock1/hf"
	domainWorkerFP  = "idemlock1/wf"
)

// storePrefix starts every key a Store sees, so that an operator can tell
// idempotency entries from other locks on a shared server.
const storePrefix = "idem/"

// storageKey returns the key the Store sees for an idempotency key: a
// domain-separated SHA-256 of (namespace, scope, key), hex encoded. Every
// field is length-prefixed, so ("ab","c") and ("a","bc") never collide.
func storageKey(domain, namespace, scope, key string) string {
	h := getHasher()
	h.field(domain)
	h.field(namespace)
	h.field(scope)
	h.field(key)
	sum := h.sum()
	putHasher(h)
	var out [len(storePrefix) + 2*sha256.Size]byte
	copy(out[:], storePrefix)
	hex.Encode(out[len(storePrefix):], sum[:])
	return string(out[:])
}

// hasher computes SHA-256 over length-prefixed fields, batching small
// fields into one buffer. It is pooled: hashing allocates nothing.
type hasher struct {
	h   hash.Hash
	buf []byte
	out [sha256.Size]byte
}

var hasherPool = sync.Pool{New: func() any {
	return &hasher{h: sha256.New(), buf: make([]byte, 0, 1024)}
}}

func getHasher() *hasher {
	h := hasherPool.Get().(*hasher)
	h.h.Reset()
	h.buf = h.buf[:0]
	return h
}

func putHasher(h *hasher) { hasherPool.Put(h) }

// field adds one field, prefixed by its length as a uvarint: a prefix-free
// encoding, so the sequence of fields is recovered from the bytes hashed.
func field[S string | []byte](h *hasher, s S) {
	h.buf = binary.AppendUvarint(h.buf, uint64(len(s)))
	if len(h.buf)+len(s) > cap(h.buf) {
		_, _ = h.h.Write(h.buf)
		h.buf = h.buf[:0]
		if len(s) > cap(h.buf) {
			if b, ok := any(s).([]byte); ok {
				_, _ = h.h.Write(b)
			} else {
				_, _ = io.WriteString(h.h, string(s))
			}
			return
		}
	}
	h.buf = append(h.buf, s...)
}

func (h *hasher) field(s string) { field(h, s) }

func (h *hasher) sum() [sha256.Size]byte {
	_, _ = h.h.Write(h.buf)
	h.h.Sum(h.out[:0])
	return h.out
}
