package memlock

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// A million one-shot keys must leave nothing behind once they expire or are
// released: memory is O(live keys).
func TestExpiredKeysAreReclaimed(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 10_000
	}
	l := New()
	var now time.Duration
	l.clock = func() time.Duration { return now } // a controlled clock keeps the test exact and fast
	ctx := context.Background()
	for i := range n {
		now = time.Duration(i) * time.Microsecond
		le, err := l.TryAcquire(ctx, "one-shot:"+strconv.Itoa(i), time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := le.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		// At most a millisecond's worth of keys may be live at once.
		if live := len(l.held); live > 1001 {
			t.Fatalf("%d holdings live after %d takes of 1ms keys, want at most 1001", live, i+1)
		}
	}
	now += time.Millisecond
	if got := l.Len(); got != 0 {
		t.Fatalf("Len() = %d after every lease expired, want 0", got)
	}
	if len(l.heap) != 0 || len(l.held) != 0 {
		t.Errorf("heap %d, map %d entries after reclaim, want 0", len(l.heap), len(l.held))
	}
}

func TestSubscriptionsAreUnregistered(t *testing.T) {
	l := New()
	ctx := context.Background()
	subs := make([]interface{ Close() error }, 0, 3)
	for range 3 {
		s, err := l.Subscribe(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if len(l.waiters["k"]) != 3 {
		t.Fatalf("%d subscribers registered, want 3", len(l.waiters["k"]))
	}
	for _, s := range subs {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
	}
	if len(l.waiters) != 0 {
		t.Errorf("waiters map holds %d keys after every subscription closed", len(l.waiters))
	}
}

func TestHeapOrderSurvivesRefreshAndRelease(t *testing.T) {
	l := New()
	var now time.Duration
	l.clock = func() time.Duration { return now }
	ctx := context.Background()
	var leases []*lease
	for i := range 50 {
		le, err := l.TryAcquire(ctx, strconv.Itoa(i), time.Duration(50-i)*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, le.(*lease))
	}
	for i, le := range leases {
		switch i % 3 {
		case 0:
			if err := le.Refresh(ctx, time.Duration(i)*time.Second+time.Millisecond); err != nil {
				t.Fatal(err)
			}
		case 1:
			if err := le.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 1; i < len(l.heap); i++ {
		if l.heap[i].deadline < l.heap[(i-1)/2].deadline {
			t.Fatalf("heap order broken at %d", i)
		}
		if l.heap[i].index != i {
			t.Fatalf("heap index %d recorded as %d", i, l.heap[i].index)
		}
	}
	// Expire them one by one: each step may reclaim only expired keys.
	for s := 0; s <= 51; s++ {
		now += time.Second
		l.mu.Lock()
		l.reclaim(now)
		for _, le := range l.held {
			if now >= le.deadline {
				t.Fatalf("expired holding %q survived reclaim", le.key)
			}
		}
		l.mu.Unlock()
	}
	if l.Len() != 0 {
		t.Errorf("Len() = %d after all deadlines passed", l.Len())
	}
}
