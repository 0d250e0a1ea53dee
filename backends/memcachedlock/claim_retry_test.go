package memcachedlock_test

import (
	"io"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// A Claim whose add meets a connection the server had closed (an idle
// connection it dropped, a reset on the path) sends the add again; when the
// retry finds the key's completed record, the Claim returns the record, as
// it does without the closed connection. A record is never displaced by an
// add, so no take of this Claim can hold the key: its outcome is known.
func TestClaimAddRetryFindsRecord(t *testing.T) {
	key := testKey(t, strconv.FormatInt(time.Now().UnixNano(), 36)) // a record outlives a run: one key per run (-count)
	done := newLocker(t)
	le, _, err := done.Claim(t.Context(), key, time.Minute)
	if err != nil || le == nil {
		t.Fatalf("first Claim: %v, %v", le, err)
	}
	if err := done.Complete(t.Context(), le, []byte("rec"), time.Minute); err != nil {
		t.Fatal(err)
	}
	var adds atomic.Int32
	fail := func(cmd string) error {
		if cmd == "add" && adds.Add(1) == 1 {
			return io.EOF // the add's reply lost on a connection the server closed
		}
		return nil
	}
	l := scriptedLocker(t, fail)
	got, rec, err := l.Claim(t.Context(), key, time.Minute)
	if adds.Load() < 2 {
		t.Fatalf("the fault did not run: %d adds", adds.Load())
	}
	if err != nil || got != nil || string(rec) != "rec" {
		t.Fatalf("Claim after a retried add = %v, %q, %v; want the stored record %q", got, rec, err, "rec")
	}
}
