package idempotency

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/idemlock/lock/backends/memlock"
)

// Item 8: the encoder and the decoder share one set of limits: a record
// check refuses at store time is exactly one decodeRecord refuses at
// replay time, so whatever is stored replays.
func TestRecordLimitsShared(t *testing.T) {
	var cases []*record
	for _, status := range []int{0, 1, 99, 100, 101, 199, 200, 204, 999, 1000} {
		for _, kind := range []uint8{kindHTTP, kindWorker} {
			cases = append(cases, &record{kind: kind, status: status}, &record{kind: kind, status: status, tombstone: true, reason: TombstoneOversize})
		}
	}
	for _, n := range []int{0, 1, maxRecordHeaders, maxRecordHeaders + 1, 300} {
		r := &record{kind: kindHTTP, status: 201}
		for i := range n {
			r.hdr = appendHeaderLine(r.hdr, "Link", fmt.Sprintf("</%d>", i))
			r.nhdr++
		}
		cases = append(cases, r)
	}
	cases = append(cases,
		&record{kind: kindHTTP, status: 201, stored: true},
		&record{kind: kindWorker, stored: true, tombstone: true, reason: TombstoneEncoding},
		&record{kind: kindHTTP, status: 201, nhdr: 1, hdr: appendHeaderLine(nil, "", "v")},
		&record{kind: kindHTTP, tombstone: true, reason: maxTombstoneReason + 1},
	)
	for i, r := range cases {
		checkErr := r.check()
		_, decErr := decodeRecord(appendRecord(nil, r))
		if (checkErr == nil) != (decErr == nil) {
			t.Errorf("record %d (kind %d, status %d, %d header lines, tombstone %v): check says %v, the decoder %v",
				i, r.kind, r.status, r.nhdr, r.tombstone, checkErr, decErr)
		}
	}
}

// Item 9: a stored record with a status net/http refuses (a corrupt or
// hand-written record) gives the 500 problem, never a panic.
func TestReplayCorruptStatus(t *testing.T) {
	store := memlock.New()
	g, err := New(store, WithScope(func(*http.Request) string { return "all" }))
	if err != nil {
		t.Fatal(err)
	}
	h := g.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the handler ran for a completed key")
	}))
	for _, status := range []int{0, 42, 100, 1000} {
		key := fmt.Sprint("k", status)
		fp := httpFingerprint(http.MethodPost, "", "/orders", "", nil)
		le, _, err := store.Claim(context.Background(), storageKey(domainHTTPKey, "", "all", key), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		// Encoded by hand: appendRecord is never given such a record.
		rec := appendRecord(nil, &record{kind: kindHTTP, fp: fp})[:headerSize]
		rec = binary.AppendUvarint(rec, uint64(status))
		rec = binary.AppendUvarint(rec, 0) // header lines
		rec = appendBytes(rec, "x")
		if err := store.Complete(context.Background(), le, rec, time.Minute); err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest(http.MethodPost, "/orders", nil)
		r.Header.Set("Idempotency-Key", key)
		w := httptest.NewRecorder()
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("status %d: the replay panicked: %v", status, p)
				}
			}()
			h.ServeHTTP(w, r)
		}()
		if w.Code != http.StatusInternalServerError {
			t.Errorf("status %d stored: replay answered %d %q, want the 500 problem", status, w.Code, w.Body)
		}
	}
	var re *RecordError
	if _, err := decodeRecord(appendRecord(nil, &record{kind: kindHTTP, status: 0})); !errors.As(err, &re) {
		t.Fatalf("status 0 decoded: %v", err)
	}
}
