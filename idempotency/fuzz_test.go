package idempotency

import (
	"bytes"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		"", "k", "8e03978e-40d5-43e8-bc93-6894a57f9324", `"quoted"`, `"a\"b\\c"`, `""`,
		"a,b", `"a", "b"`, "a b", "clé", "\x00", `"abc`, `"a\nb"`, strings.Repeat("k", 255),
		strings.Repeat("k", 256), `"` + strings.Repeat("k", 255) + `"`, `"a"b`, `\`, `"k";p=1`, `"k";a;b=?0;c=:YQ==:`, `"k";`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		key, err := ParseKey(v)
		if err != nil {
			var ke *KeyError
			if !errors.As(err, &ke) || !errors.Is(err, ErrInvalidKey) || key != "" {
				t.Fatalf("ParseKey(%q): error %v is not a *KeyError", v, err)
			}
			return
		}
		if key == "" || len(key) > MaxKeyLen {
			t.Fatalf("ParseKey(%q) accepted %d bytes", v, len(key))
		}
		for i := 0; i < len(key); i++ {
			if key[i] < 0x20 || key[i] > 0x7e {
				t.Fatalf("ParseKey(%q) accepted byte %#x", v, key[i])
			}
		}
		if v[0] != '"' {
			if key != v || strings.ContainsAny(key, ", ") {
				t.Fatalf("bare ParseKey(%q) = %q", v, key)
			}
			return
		}
		// Quoting the key again gives a value that parses to the same key.
		q := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
		if k2, err := ParseKey(q); err != nil || k2 != key {
			t.Fatalf("ParseKey(%q) = %q, but re-quoted %q parses to %q, %v", v, key, q, k2, err)
		}
	})
}

func sampleRecords() []*record {
	return []*record{
		withHeader(&record{kind: kindHTTP, status: 201, fp: [32]byte{1, 2, 3}, body: []byte(`{"id":1}`)},
			http.Header{"Content-Type": {"application/json"}, "Link": {"<a>", "<b>"}}),
		{kind: kindHTTP, status: 200},
		{kind: kindHTTP, tombstone: true, reason: TombstoneOversize},
		{kind: kindHTTP, tombstone: true, reason: TombstoneHijacked, fp: [32]byte{31: 9}},
		{kind: kindWorker, body: []byte(`"v"`)},
		{kind: kindWorker, stored: true, body: []byte("card declined")},
		{kind: kindWorker, tombstone: true, reason: TombstoneEncoding},
	}
}

func withHeader(r *record, h http.Header) *record {
	for k, vs := range h {
		for _, v := range vs {
			r.hdr = appendHeaderLine(r.hdr, k, v)
			r.nhdr++
		}
	}
	return r
}

func headerOf(r *record) http.Header {
	h := http.Header{}
	r.eachHeader(func(name, value []byte) { h[string(name)] = append(h[string(name)], string(value)) })
	return h
}

func equalRecords(a, b *record) bool {
	return a.kind == b.kind && a.tombstone == b.tombstone && a.stored == b.stored && a.reason == b.reason &&
		a.fp == b.fp && a.status == b.status && bytes.Equal(a.body, b.body) &&
		a.nhdr == b.nhdr && maps.EqualFunc(headerOf(a), headerOf(b), slices.Equal)
}

func TestRecordRoundTrip(t *testing.T) {
	for i, r := range sampleRecords() {
		b := appendRecord(nil, r)
		got, err := decodeRecord(b)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if !equalRecords(r, got) {
			t.Fatalf("record %d: %+v, want %+v", i, got, r)
		}
		// Every truncation is an error, never a panic.
		for n := range len(b) {
			if _, err := decodeRecord(b[:n]); !errors.Is(err, ErrBadRecord) {
				t.Fatalf("record %d truncated to %d bytes: %v", i, n, err)
			}
		}
		if _, err := decodeRecord(append(b, 0)); !errors.Is(err, ErrBadRecord) {
			t.Fatalf("record %d with a trailing byte: %v", i, err)
		}
	}
	bad := appendRecord(nil, sampleRecords()[0])
	bad[3] = 2
	var re *RecordError
	if _, err := decodeRecord(bad); !errors.As(err, &re) || !strings.Contains(re.Reason, "version") {
		t.Fatalf("a newer version: %v", err)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	for _, r := range sampleRecords() {
		f.Add(appendRecord(nil, r))
	}
	f.Add([]byte("IDR"))
	f.Add([]byte{})
	f.Add(append([]byte("IDR\x01\x01\x00\x00"), make([]byte, 32+10)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			if !errors.Is(err, ErrBadRecord) || r != nil {
				t.Fatalf("error %v is not a *RecordError", err)
			}
			return
		}
		r2, err := decodeRecord(appendRecord(nil, r))
		if err != nil || !equalRecords(r, r2) {
			t.Fatalf("re-encoding a decoded record: %+v vs %+v, %v", r, r2, err)
		}
	})
}

// Two requests share a fingerprint only if method, pattern, route, query
// and body are all equal: the length-prefixed encoding is injective.
func FuzzFingerprint(f *testing.F) {
	f.Add("POST", "", "/orders", "a=1", []byte("x"), "POST", "", "/orders", "a=1", []byte("x"))
	f.Add("POST", "", "/orders", "a=1", []byte("x"), "POST", "", "/orders", "a=", []byte("1x"))
	f.Add("POST", "", "/ab", "", []byte(""), "POST", "", "/a", "b", []byte(""))
	f.Add("POST", "POST /o/{id}", "/o/1", "", []byte(""), "POST", "POST /o/{id}", "/o/2", "", []byte(""))
	f.Fuzz(func(t *testing.T, m1, p1, r1, q1 string, b1 []byte, m2, p2, r2, q2 string, b2 []byte) {
		same := m1 == m2 && p1 == p2 && r1 == r2 && q1 == q2 && bytes.Equal(b1, b2)
		f1 := httpFingerprint(m1, p1, r1, q1, b1)
		f2 := httpFingerprint(m2, p2, r2, q2, b2)
		if (f1 == f2) != same {
			t.Fatalf("fingerprints equal=%v for requests equal=%v", f1 == f2, same)
		}
		if workerFingerprint(b1) == f1 {
			t.Fatalf("a worker fingerprint equals an HTTP one")
		}
	})
}

func TestStorageKeyInjective(t *testing.T) {
	seen := map[string]string{}
	for _, parts := range [][3]string{{"", "ab", "c"}, {"", "a", "bc"}, {"a", "b", "c"}, {"ab", "", "c"}, {"", "", "abc"}} {
		k := storageKey(domainHTTPKey, parts[0], parts[1], parts[2])
		if prev, dup := seen[k]; dup {
			t.Fatalf("storage key collision: %v and %s", parts, prev)
		}
		seen[k] = strconv.Quote(strings.Join(parts[:], "|"))
		if k == storageKey(domainWorkerKey, parts[0], parts[1], parts[2]) {
			t.Fatalf("HTTP and worker keys collide")
		}
	}
}
