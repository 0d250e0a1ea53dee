package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
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
// escapes, optionally followed by RFC 8941 parameters such as ;p=1, which
// are checked and ignored), and the bare token most clients (Stripe's among
// them) send. The key is the unquoted value. It is rejected, with a
// [*KeyError], when it is:
//
//   - empty (including "");
//   - a list: a comma in a bare value, or anything after the closing quote
//     other than well-formed parameters;
//   - not printable ASCII: a bare key is visible ASCII (0x21–0x7E) only; a
//     quoted one may also contain spaces, as Structured Field Strings do;
//   - longer than [MaxKeyLen] bytes once unquoted.
//
// A bare value is taken whole, semicolons included: "k;p=1" is that
// five-byte key, not "k" with a parameter (parameters belong to the
// structured form).
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
	key, rest, err := sfString(v)
	if err != nil {
		return "", err
	}
	if rest != "" {
		if err := sfParams(rest); err != nil {
			return "", err
		}
	}
	switch {
	case key == "":
		return "", &KeyError{Reason: "empty"}
	case len(key) > MaxKeyLen:
		return "", &KeyError{Reason: fmt.Sprintf("%d bytes, longer than %d", len(key), MaxKeyLen)}
	}
	return key, nil
}

// sfString parses the Structured Field String (RFC 8941 section 3.3.3) at
// the start of v, which starts with a quote, and returns its value and what
// follows the closing quote.
func sfString(v string) (value, rest string, err error) {
	var buf []byte
	i := 1
	for ; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\':
			i++
			if i == len(v) || (v[i] != '"' && v[i] != '\\') {
				return "", "", &KeyError{Reason: "bad escape in quoted string"}
			}
			if buf == nil {
				buf = append(make([]byte, 0, len(v)), v[1:i-1]...)
			}
			buf = append(buf, v[i])
			continue
		case c == '"':
			if buf != nil {
				return string(buf), v[i+1:], nil
			}
			return v[1:i], v[i+1:], nil
		case c < 0x20 || c > 0x7e:
			return "", "", &KeyError{Reason: fmt.Sprintf("byte %#02x at offset %d is not printable ASCII", c, i)}
		}
		if buf != nil {
			buf = append(buf, c)
		}
	}
	return "", "", &KeyError{Reason: "unterminated quoted string"}
}

// sfParams checks that rest, what follows an Item's bare item, is RFC 8941
// parameters (section 3.1.2): *( ";" *SP key [ "=" bare-item ] ), nothing
// else. Their values are not used.
func sfParams(rest string) error {
	notParams := &KeyError{Reason: "a list of several values, or text after the quoted string that is not parameters"}
	for rest != "" {
		if rest[0] != ';' {
			return notParams
		}
		rest = strings.TrimLeft(rest[1:], " ")
		// key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
		if rest == "" || !(isLCAlpha(rest[0]) || rest[0] == '*') {
			return &KeyError{Reason: "bad parameter name after the quoted string"}
		}
		n := 1
		for n < len(rest) && (isLCAlpha(rest[n]) || isDigit(rest[n]) || strings.IndexByte("_-.*", rest[n]) >= 0) {
			n++
		}
		rest = rest[n:]
		if rest != "" && rest[0] == '=' {
			var err error
			if rest, err = sfBareItem(rest[1:]); err != nil {
				return err
			}
		}
	}
	return nil
}

// sfBareItem consumes one RFC 8941 bare item (integer, decimal, string,
// token, byte sequence or boolean) from the start of v.
func sfBareItem(v string) (string, error) {
	bad := &KeyError{Reason: "bad parameter value after the quoted string"}
	if v == "" {
		return "", bad
	}
	switch c := v[0]; {
	case c == '-' || isDigit(c):
		i := 0
		if c == '-' {
			i++
		}
		start := i
		for i < len(v) && isDigit(v[i]) {
			i++
		}
		digits := i - start
		if digits == 0 {
			return "", bad
		}
		if i < len(v) && v[i] == '.' {
			i++
			fstart := i
			for i < len(v) && isDigit(v[i]) {
				i++
			}
			if digits > 12 || i-fstart < 1 || i-fstart > 3 {
				return "", bad
			}
		} else if digits > 15 {
			return "", bad
		}
		return v[i:], nil
	case c == '"':
		_, rest, err := sfString(v)
		if err != nil {
			return "", bad
		}
		return rest, nil
	case isAlpha(c) || c == '*':
		i := 1
		for i < len(v) && (isTChar(v[i]) || v[i] == ':' || v[i] == '/') {
			i++
		}
		return v[i:], nil
	case c == ':':
		i := 1
		for i < len(v) && (isAlpha(v[i]) || isDigit(v[i]) || strings.IndexByte("+/=", v[i]) >= 0) {
			i++
		}
		if i == len(v) || v[i] != ':' {
			return "", bad
		}
		return v[i+1:], nil
	case c == '?':
		if len(v) < 2 || (v[1] != '0' && v[1] != '1') {
			return "", bad
		}
		return v[2:], nil
	}
	return "", bad
}

func isDigit(c byte) bool   { return c >= '0' && c <= '9' }
func isLCAlpha(c byte) bool { return c >= 'a' && c <= 'z' }
func isAlpha(c byte) bool   { return isLCAlpha(c) || (c >= 'A' && c <= 'Z') }

// isTChar reports whether c is an RFC 9110 token character.
func isTChar(c byte) bool {
	return isAlpha(c) || isDigit(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
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
