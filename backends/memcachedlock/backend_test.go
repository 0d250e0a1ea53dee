package memcachedlock_test

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/internal/testenv"
)

// runID keeps this run's keys and prefixes apart from other runs on the
// shared server.
var runID = func() string {
	var b [6]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}()

// testKey returns a key unique to this run and test.
func testKey(t testing.TB, name string) string {
	return "memcachedlock-test/" + runID + "/" + t.Name() + "/" + name
}

// testPrefix returns an item prefix unique to this run and test, so that a
// test may delete its own counters without touching anyone else's.
func testPrefix(t testing.TB) string {
	return "idemlock-test-" + runID + "-" + strings.ReplaceAll(t.Name(), "/", "-") + ":"
}

func take(t *testing.T, l lock.Locker, key string, ttl time.Duration) lock.Lease {
	t.Helper()
	le, err := l.TryAcquire(t.Context(), key, ttl)
	if err != nil {
		t.Fatalf("TryAcquire(%q, %v): %v", key, ttl, err)
	}
	return le
}

func refused(t *testing.T, l lock.Locker, key, why string) {
	t.Helper()
	le, err := l.TryAcquire(t.Context(), key, time.Minute)
	if err == nil {
		_ = le.Release(context.WithoutCancel(t.Context()))
		t.Fatalf("%s: TryAcquire(%q) succeeded, want the key held", why, key)
	}
	if !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("%s: TryAcquire(%q): got %v, want ErrNotAcquired", why, key, err)
	}
}

// refusedBefore is refused for a key whose holder's TTL may run out at
// until: a probe answered after until proves nothing (a loaded machine may
// send it late), so only one answered before until must be refused.
func refusedBefore(t *testing.T, l lock.Locker, key string, until time.Time, why string) {
	t.Helper()
	late, err := testenv.ProbeBefore(t.Context(), l, key, until)
	if err != nil {
		t.Fatalf("%s: %v", why, err)
	}
	if late > 0 {
		t.Logf("%s: inconclusive: the probe was answered %v after the TTL could have run out", why, late)
	}
}

// awaitExpiry polls with l until key can be taken, at most within.
func awaitExpiry(t *testing.T, l lock.Locker, key string, ttl, within time.Duration) lock.Lease {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		le, err := l.TryAcquire(t.Context(), key, ttl)
		if err == nil {
			return le
		}
		if !errors.Is(err, lock.ErrNotAcquired) || time.Now().After(deadline) {
			t.Fatalf("waiting for %q to expire: %v", key, err)
		}
		time.Sleep(20 * time.Millisecond) // expiry sends no event
	}
}

// The server behaviour the release rests on, checked on memcached itself:
// a cas with an expiry of -1 is a compare-and-delete.
func TestServerCompareAndDelete(t *testing.T) {
	c := newClient(t, new(atomic.Int64))
	key := "memcachedlock-test-" + runID + "-cad"
	if err := c.Add(&memcache.Item{Key: key, Value: []byte("first"), Expiration: 60}); err != nil {
		t.Fatal(err)
	}
	old, err := c.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	newer := &memcache.Item{Key: key, Value: []byte("second"), Expiration: 60, CasID: old.CasID}
	if err := c.CompareAndSwap(newer); err != nil {
		t.Fatalf("cas with the current CAS id: %v", err)
	}
	old.Expiration = -1
	if err := c.CompareAndSwap(old); !errors.Is(err, memcache.ErrCASConflict) {
		t.Fatalf("cas -1 with a stale CAS id: got %v, want ErrCASConflict", err)
	}
	cur, err := c.Get(key)
	if err != nil || string(cur.Value) != "second" {
		t.Fatalf("after a stale cas -1 the item must be untouched: got %v, %v", cur, err)
	}
	cur.Expiration = -1
	if err := c.CompareAndSwap(cur); err != nil {
		t.Fatalf("cas -1 with the current CAS id: %v", err)
	}
	if _, err := c.Get(key); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("after cas -1 the item must be gone at once: got %v", err)
	}
	if err := c.Add(&memcache.Item{Key: key, Value: []byte("third"), Expiration: 60}); err != nil {
		t.Fatalf("add after cas -1: %v", err)
	}
	_ = c.Delete(key)
}

// A stale lease's Release and Refresh leave the newer holder's item exactly
// as it was: same value, same CAS id, so not even its expiry changed.
func TestStaleReleaseLeavesNewerItem(t *testing.T) {
	a, b := newLocker(t), newLocker(t)
	key := testKey(t, "k")
	stale := take(t, a, key, time.Second)
	newer := awaitExpiry(t, b, key, time.Minute, 5*time.Second)
	raw := newClient(t, new(atomic.Int64))
	item := memcachedlock.DefaultPrefix + "l:r" + key
	before, err := raw.Get(item)
	if err != nil {
		t.Fatalf("reading the newer holder's item %q: %v", item, err)
	}
	if err := stale.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("stale Release: got %v, want ErrNotHeld", err)
	}
	if err := stale.Refresh(t.Context(), time.Hour); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("stale Refresh: got %v, want ErrNotHeld", err)
	}
	after, err := raw.Get(item)
	if err != nil || string(after.Value) != string(before.Value) || after.CasID != before.CasID {
		t.Fatalf("the newer holder's item changed: before %q cas %d, after %v (err %v)", before.Value, before.CasID, after, err)
	}
	if newer.Token() <= stale.Token() {
		t.Errorf("newer token %d not above the stale one %d", newer.Token(), stale.Token())
	}
	if err := newer.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// memcached's clock ticks once a second, so an item set to live N seconds
// may go up to a second early: the backend sends one second more. Without
// it a 1 s lease would be gone at 0.9 s most of the time.
func TestTTLHeldToTheEnd(t *testing.T) {
	holder, other := newLocker(t), newLocker(t)
	for i := range 4 {
		time.Sleep(time.Duration(rand.N(1000)) * time.Millisecond) // a random phase of the server's tick
		key := testKey(t, fmt.Sprint(i))
		sent := time.Now()
		le := take(t, holder, key, time.Second)
		d := le.(lock.Deadliner).Deadline()
		if d.Before(sent.Add(time.Second)) || d.After(time.Now().Add(time.Second)) {
			t.Fatalf("Deadline is %v after the take was sent, want the 1 s TTL", d.Sub(sent))
		}
		time.Sleep(time.Until(sent.Add(900 * time.Millisecond)))
		refusedBefore(t, other, key, sent.Add(time.Second), "a 1 s lease checked at 0.9 s")
		// Like the probe, a Release answered after the TTL proves nothing.
		if err := le.Release(t.Context()); err != nil && (!errors.Is(err, lock.ErrNotHeld) || time.Since(sent) < time.Second) {
			t.Fatalf("Release at about 0.9 s of a 1 s lease: %v", err)
		}
	}
	// A sub-second TTL counts as a whole second.
	key := testKey(t, "subsecond")
	sent := time.Now()
	le := take(t, holder, key, time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	refusedBefore(t, other, key, sent.Add(time.Second), "a 1 ms TTL is rounded up to a second")
	_ = le.Release(t.Context())
}

func TestTTLBeyondThirtyDays(t *testing.T) {
	l := newLocker(t)
	key := testKey(t, "k")
	for _, ttl := range []time.Duration{memcachedlock.MaxTTL + time.Nanosecond, 31 * 24 * time.Hour, 1<<63 - 1} {
		le, err := l.TryAcquire(t.Context(), key, ttl)
		var te *lock.TTLError
		if le != nil || !errors.As(err, &te) {
			t.Fatalf("TryAcquire with TTL %v: got (%v, %v), want a *lock.TTLError", ttl, le, err)
		}
		if _, _, err := l.Claim(t.Context(), key, ttl); !errors.As(err, &te) {
			t.Fatalf("Claim with TTL %v: got %v, want a *lock.TTLError", ttl, err)
		}
	}
	// The longest TTL works, and is not read as an absolute time (which
	// would be in 1970, so the item would be gone at once).
	le := take(t, l, key, memcachedlock.MaxTTL)
	refused(t, newLocker(t), key, "a lease with the longest TTL")
	var te *lock.TTLError
	if err := le.Refresh(t.Context(), 40*24*time.Hour); !errors.As(err, &te) {
		t.Errorf("Refresh with 40 days: got %v, want a *lock.TTLError", err)
	}
	if err := le.Refresh(t.Context(), memcachedlock.MaxTTL); err != nil {
		t.Errorf("Refresh with the longest TTL: %v", err)
	}
	if err := l.Complete(t.Context(), le, []byte("r"), 60*24*time.Hour); !errors.As(err, &te) {
		t.Errorf("Complete with a 60-day retention: got %v, want a *lock.TTLError", err)
	}
	refused(t, newLocker(t), key, "rejected Refresh and Complete must leave the lease holding")
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// Keys the server cannot store as they are still work, and the escaped and
// hashed forms never meet.
func TestOddKeys(t *testing.T) {
	l, other := newLocker(t), newLocker(t)
	base := testKey(t, "")
	keys := []string{
		base + "with space", base + "tab\there", base + "nul\x00", base + "nl\r\n", base + "del\x7f", base + "é",
		base + strings.Repeat("x", 250), base + strings.Repeat("x", 251),
		strings.Repeat("y", lock.MaxKeyLen), strings.Repeat("y", lock.MaxKeyLen-1) + " ",
	}
	// Item names as the package doc describes them: a key long enough to be
	// hashed, and a plain key spelled like that hash.
	long := base + strings.Repeat("L", 300)
	keys = append(keys, long, "h"+hashed(long))
	var leases []lock.Lease
	for _, k := range keys {
		leases = append(leases, take(t, l, k, time.Minute))
	}
	for _, le := range leases {
		refused(t, other, le.Key(), "an odd key held by one lease")
		if err := le.Release(t.Context()); err != nil {
			t.Fatalf("Release of %.40q: %v", le.Key(), err)
		}
	}
	raw := newClient(t, new(atomic.Int64))
	if _, err := raw.Get(memcachedlock.DefaultPrefix + "l:h" + hashed(long)); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Errorf("the hashed item of a released key: got %v, want a miss", err)
	}
}

// hashed is the documented hashed form of a key.
func hashed(key string) string {
	sum := sha256Sum(key)
	return base64URL(sum)
}

// Losing the token counter (eviction, restart, flush) must not make tokens
// go back: the counter is re-seeded from the clock.
func TestTokensSurviveCounterLoss(t *testing.T) {
	prefix := testPrefix(t)
	l := newLocker(t, memcachedlock.WithPrefix(prefix))
	raw := newClient(t, new(atomic.Int64))
	key := testKey(t, "k")
	var last uint64
	for round := range 3 {
		for range 3 {
			le := take(t, l, key, time.Minute)
			if le.Token() <= last {
				t.Fatalf("round %d: token %d after %d", round, le.Token(), last)
			}
			last = le.Token()
			if err := le.Release(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		// Lose every counter of this test's prefix, as an eviction would.
		lost := 0
		for s := range 64 {
			if raw.Delete(fmt.Sprintf("%st:%d", prefix, s)) == nil {
				lost++
			}
		}
		if lost != 1 {
			t.Fatalf("deleted %d counters of prefix %q, want exactly the 1 this key uses", lost, prefix)
		}
	}
	if now := uint64(time.Now().UnixNano()); last > now {
		t.Errorf("token %d is above the clock's %d: seeds must come from it", last, now)
	}
}

func TestRoundTrips(t *testing.T) {
	var n atomic.Int64
	l, err := memcachedlock.New(newClient(t, &n))
	if err != nil {
		t.Fatal(err)
	}
	key := testKey(t, "k")
	count := func(what string, want int64, f func()) {
		t.Helper()
		before := n.Load()
		f()
		if got := n.Load() - before; got != want {
			t.Errorf("%s: %d requests, want %d", what, got, want)
		} else {
			t.Logf("%s: %d requests", what, got)
		}
	}
	release := func(le lock.Lease) {
		if err := le.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	release(take(t, l, key, time.Minute)) // the counter stripe exists from now on
	count("take + release", 5, func() { release(take(t, l, key, time.Minute)) })
	le := take(t, l, key, time.Minute)
	count("failed take", 1, func() { refused(t, l, key, "held") })
	count("refresh", 2, func() {
		if err := le.Refresh(t.Context(), time.Minute); err != nil {
			t.Fatal(err)
		}
	})
	count("release", 2, func() { release(le) })
	count("release of a released lease", 0, func() {
		if err := le.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
			t.Fatalf("second Release: %v", err)
		}
	})
	var claimed lock.Lease
	count("first claim", 3, func() {
		var err error
		if claimed, _, err = l.Claim(t.Context(), key, time.Minute); err != nil || claimed == nil {
			t.Fatalf("Claim: %v", err)
		}
	})
	count("complete", 2, func() {
		if err := l.Complete(t.Context(), claimed, []byte("rec"), time.Minute); err != nil {
			t.Fatal(err)
		}
	})
	count("replayed claim", 2, func() {
		if le, rec, err := l.Claim(t.Context(), key, time.Minute); err != nil || le != nil || string(rec) != "rec" {
			t.Fatalf("Claim of a completed key: (%v, %q, %v)", le, rec, err)
		}
	})
}

func TestRecordSizeLimit(t *testing.T) {
	l := newLocker(t)
	// The longest plain key that is stored as it is: a 250-byte item name,
	// so the record's room is the smallest.
	key := testKey(t, strconv.FormatInt(time.Now().UnixNano(), 36)+"/") // a record outlives a run: one key per run (-count)
	key += strings.Repeat("k", 250-len(memcachedlock.DefaultPrefix)-3-len(key))
	max := memcachedlock.DefaultMaxItemSize - 601
	le, _, err := l.Claim(t.Context(), key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Complete(t.Context(), le, make([]byte, max+1), time.Minute); !errors.Is(err, memcachedlock.ErrRecordTooLarge) {
		t.Fatalf("Complete with %d bytes: got %v, want ErrRecordTooLarge", max+1, err)
	}
	refused(t, newLocker(t), key, "a refused Complete leaves the lease holding")
	rec := make([]byte, max)
	rec[max-1] = 7
	if err := l.Complete(t.Context(), le, rec, time.Minute); err != nil {
		t.Fatalf("Complete with the largest record, %d bytes: %v", max, err)
	}
	if _, got, err := newLocker(t).Claim(t.Context(), key, time.Minute); err != nil || len(got) != max || got[max-1] != 7 {
		t.Fatalf("Claim after Complete: %d bytes, %v", len(got), err)
	}

	// A Locker told the wrong limit still gets a clear error: the server's.
	big := newLocker(t, memcachedlock.WithMaxItemSize(4<<20))
	key2 := testKey(t, "big")
	le, _, err = big.Claim(t.Context(), key2, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := big.Complete(t.Context(), le, make([]byte, 2<<20), time.Minute); !errors.Is(err, memcachedlock.ErrRecordTooLarge) {
		t.Fatalf("Complete of 2 MiB on a 1 MiB server: got %v, want ErrRecordTooLarge", err)
	}
	refused(t, newLocker(t), key2, "a Complete the server refused leaves the lease holding")
	if err := le.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestCompleteForeignLease(t *testing.T) {
	l := newLocker(t)
	for _, le := range []lock.Lease{nil, fakeLease{}} {
		if err := l.Complete(t.Context(), le, []byte("r"), time.Minute); !errors.Is(err, lock.ErrInvalidArgument) {
			t.Errorf("Complete with %T: got %v, want ErrInvalidArgument", le, err)
		}
	}
}

type fakeLease struct{ lock.Lease }

func TestClosed(t *testing.T) {
	c := newClient(t, new(atomic.Int64))
	l, err := memcachedlock.New(c)
	if err != nil {
		t.Fatal(err)
	}
	key := testKey(t, "k")
	le := take(t, l, key, time.Minute)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.TryAcquire(t.Context(), key+"2", time.Minute); !errors.Is(err, memcachedlock.ErrClosed) {
		t.Errorf("TryAcquire after Close: got %v, want ErrClosed", err)
	}
	if err := le.Release(t.Context()); !errors.Is(err, memcachedlock.ErrClosed) {
		t.Errorf("Release after Close: got %v, want ErrClosed", err)
	}
	// The caller's client is still the caller's, and still works.
	if err := c.Set(&memcache.Item{Key: "memcachedlock-test-" + runID + "-closed", Value: []byte("x"), Expiration: 5}); err != nil {
		t.Errorf("the client passed to New was closed by the Locker: %v", err)
	}
	if l2, err := memcachedlock.New(newClient(t, new(atomic.Int64))); err != nil || l2.Close() != nil {
		t.Fatalf("New and Close of an unused Locker: %v", err)
	}
	if l, err := memcachedlock.New(nil); !errors.Is(err, lock.ErrInvalidArgument) || l != nil {
		t.Errorf("New(nil): got (%v, %v), want ErrInvalidArgument", l, err)
	}
}

// The address must be up for this test: it closes a listener and dials its
// port.
func TestConnectionRefused(t *testing.T) {
	_ = testenv.MemcachedAddr(t)
	c := memcache.New(closedAddr(t))
	l, err := memcachedlock.New(c)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	key := testKey(t, "k")
	le, err := l.TryAcquire(t.Context(), key, time.Minute)
	if le != nil || err == nil || errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("TryAcquire with the server down: got (%v, %v), want a connection error", le, err)
	}
	if !isRefused(err) {
		t.Errorf("TryAcquire with the server down: %v does not match ECONNREFUSED", err)
	}
	if _, _, err := l.Claim(t.Context(), key, time.Minute); err == nil || errors.Is(err, lock.ErrNotAcquired) || !isRefused(err) {
		t.Errorf("Claim with the server down: got %v, want a connection error", err)
	}
	start := time.Now()
	if _, err := lock.Acquire(t.Context(), l, key, time.Minute); err == nil || errors.Is(err, lock.ErrNotAcquired) {
		t.Errorf("Acquire with the server down: got %v, want the connection error at once", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Acquire with the server down took %v, want it to give up at once", d)
	}
}
