package memlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
)

// A *Locker is an idempotency.Store: this fails to compile otherwise.
var _ idempotency.Store = (*Locker)(nil)

func TestStoreConformance(t *testing.T) {
	table := New()
	conformance.RunStore(t, conformance.StoreConfig{
		NewStore:       func(t *testing.T) idempotency.Store { return table },
		TTLGranularity: time.Millisecond,
	})
}

// fakeClock is a manual monotonic clock for memlock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Duration
}

func (c *fakeClock) Now() time.Duration { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now += d
	c.mu.Unlock()
}

func newFake() (*Locker, *fakeClock) {
	clk := &fakeClock{now: time.Hour}
	l := New()
	l.clock = clk.Now
	return l, clk
}

// Records are reclaimed like expired leases: memory stays proportional to
// live keys plus retained records, with no sweeper goroutine.
func TestStoreRecordsReclaimed(t *testing.T) {
	l, clk := newFake()
	ctx := context.Background()
	const n = 10_000
	for i := range n {
		le, rec, err := l.Claim(ctx, fmt.Sprint("k", i), time.Minute)
		if err != nil || rec != nil {
			t.Fatalf("Claim: %v, %d-byte record", err, len(rec))
		}
		ret := time.Hour
		if i%2 == 0 {
			ret = time.Minute
		}
		if err := l.Complete(ctx, le, []byte("r"), ret); err != nil {
			t.Fatal(err)
		}
	}
	if got := l.Records(); got != n {
		t.Fatalf("Records() = %d, want %d", got, n)
	}
	if got := l.Len(); got != 0 {
		t.Fatalf("Len() = %d after every key completed, want 0", got)
	}
	clk.Add(time.Minute)
	if got := l.Records(); got != n/2 {
		t.Fatalf("Records() after a minute = %d, want %d", got, n/2)
	}
	clk.Add(time.Hour)
	if got := l.Records(); got != 0 {
		t.Fatalf("Records() after an hour = %d, want 0", got)
	}
	if len(l.records) != 0 || len(l.rheap) != 0 || len(l.held) != 0 || len(l.heap) != 0 {
		t.Fatalf("tables not empty: records %d, rheap %d, held %d, heap %d", len(l.records), len(l.rheap), len(l.held), len(l.heap))
	}
}

// Retention is exact on the monotonic clock; a Claim after it takes the key.
func TestStoreRetentionExact(t *testing.T) {
	l, clk := newFake()
	ctx := context.Background()
	le, _, _ := l.Claim(ctx, "k", time.Second)
	if err := l.Complete(ctx, le, []byte("r"), time.Minute); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute - time.Nanosecond)
	if le2, rec, err := l.Claim(ctx, "k", time.Second); err != nil || le2 != nil || string(rec) != "r" {
		t.Fatalf("Claim just before the retention ends: (%v, %q, %v), want the record", le2, rec, err)
	}
	clk.Add(time.Nanosecond)
	le2, rec, err := l.Claim(ctx, "k", time.Second)
	if err != nil || le2 == nil || rec != nil {
		t.Fatalf("Claim at the end of the retention: (%v, %q, %v), want a Lease", le2, rec, err)
	}
	if le2.Token() <= le.Token() {
		t.Fatalf("token %d after token %d", le2.Token(), le.Token())
	}
}

// The record handed to Complete and the one Claim returns are copies.
func TestStoreRecordCopied(t *testing.T) {
	l := New()
	ctx := context.Background()
	le, _, _ := l.Claim(ctx, "k", time.Minute)
	buf := []byte("abc")
	if err := l.Complete(ctx, le, buf, time.Minute); err != nil {
		t.Fatal(err)
	}
	buf[0] = 'X'
	_, rec, _ := l.Claim(ctx, "k", time.Minute)
	rec[1] = 'Y'
	_, rec2, _ := l.Claim(ctx, "k", time.Minute)
	if string(rec2) != "abc" {
		t.Fatalf("stored record changed to %q through a caller's slice", rec2)
	}
}

func TestStoreCompleteForeignLease(t *testing.T) {
	a, b := New(), New()
	ctx := context.Background()
	le, _, _ := a.Claim(ctx, "k", time.Minute)
	if err := b.Complete(ctx, le, []byte("r"), time.Minute); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Fatalf("Complete on another Locker's lease: %v, want ErrInvalidArgument", err)
	}
	if err := a.Complete(ctx, le, []byte("r"), time.Minute); err != nil {
		t.Fatalf("Complete on the right Locker after a foreign attempt: %v", err)
	}
}
