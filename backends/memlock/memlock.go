// Package memlock is the in-process backend of idemlock: locks that live in
// one process's memory, for tests, single-instance services and as the
// embedded default behind the "mem://" URL.
//
// Guarantees: taking a key is a map lookup under one mutex; release and
// refresh compare the lease's own fencing token, so a stale lease never
// touches a newer holding; TTLs are exact on the monotonic clock; fencing
// tokens come from one counter per Locker, so they increase across keys,
// holders and expiries. Waiters registered through [Locker.Subscribe] (which
// lock.Acquire uses) are woken by the release itself, one at a time in the
// order they subscribed, so the lock is handed on first come, first served:
// no polling, no thundering herd and no goroutine per lock. A waiter that is
// woken and gives up (its context ended) without taking the key passes the
// wake-up to the next, so a free key is always handed on.
//
// Memory is proportional to the keys currently held (and keys with waiters)
// plus the idempotency records still in their retention (see
// [Locker.Claim]): expired holdings and records are reclaimed from deadline
// heaps as later calls pass by, so millions of one-shot keys leave nothing
// behind.
//
// Caveat: the locks exclude only goroutines of this process that share the
// same Locker value. Use a networked backend to exclude other processes.
package memlock

import (
	"context"
	"math"
	"net/url"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// errs makes the package's errors.
const errs = driver.Name("memlock")

// Schemes are the URL schemes this package registers with [lock.Open]:
// "mem://" takes no host, path or options.
var Schemes = []string{"mem"}

func init() {
	for _, s := range Schemes {
		lock.Register(s, open)
	}
}

func open(_ context.Context, u *url.URL) (lock.Backend, error) {
	if u.Host != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, errs.URLError("the mem URL takes no host, path or options: %s", u.Redacted())
	}
	return New(), nil
}

// Locker is an in-process lock table. The zero value is not usable; call
// [New]. A Locker is safe for concurrent use.
type Locker struct {
	mu      sync.Mutex
	held    map[string]*lease     // current holding per key, possibly expired
	heap    deadlineHeap          // every holding in held, by deadline
	waiters map[string][]*waitSub // subscriptions per key
	next    uint64                // last fencing token handed out
	base    time.Time             // the clock's origin
	clock   func() time.Duration  // monotonic time since base
	records map[string]*lease     // completed idempotency records (store.go)
	rheap   deadlineHeap          // every entry in records, by retention end
	gate    driver.Gate           // closed by Close; only Ping checks it
}

// Option configures a Locker. There are none yet; the parameter keeps New's
// shape like the networked backends'. Since no option can be invalid, New
// returns no error.
type Option func(*Locker)

// New returns a ready, empty Locker.
func New(opts ...Option) *Locker {
	// Deadlines are monotonic durations since base: time.Since reads only
	// the monotonic clock, where time.Now also reads the wall clock and
	// time.Time arithmetic costs as much again.
	base := time.Now()
	l := &Locker{
		gate:    driver.Gate{Name: errs, ServeAfterClose: true},
		held:    make(map[string]*lease),
		waiters: make(map[string][]*waitSub),
		base:    base,
		clock:   func() time.Duration { return time.Since(base) },
		records: make(map[string]*lease),
	}
	for _, o := range opts {
		if o != nil {
			o(l)
		}
	}
	return l
}

// Close only makes [Locker.Ping] report an error matching [lock.ErrClosed]:
// a memory Locker holds no outside resources, and its locks keep working.
// It exists so that *Locker is a lock.Backend.
func (l *Locker) Close() error { return l.gate.Close(nil) }

// TryAcquire takes key for ttl if no live lease holds it.
func (l *Locker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if err := l.gate.Check(ctx, "take", key, ttl); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	l.reclaim(now)
	return l.take(key, ttl, now)
}

// take hands out a new lease on key unless a live one holds it. Expired
// holdings were reclaimed by the caller. l.mu is held.
func (l *Locker) take(key string, ttl, now time.Duration) (*lease, error) {
	if cur := l.held[key]; cur != nil {
		return nil, &lock.NotAcquiredError{Key: key, Remaining: cur.deadline - now}
	}
	l.next++
	le := &lease{l: l, key: key, token: l.next, deadline: later(now, ttl), index: -1}
	l.held[key] = le
	l.heap.push(le)
	return le, nil
}

// later returns now+d, saturating instead of overflowing for TTLs near the
// longest Duration.
func later(now, d time.Duration) time.Duration {
	if d > math.MaxInt64-now {
		return math.MaxInt64
	}
	return now + d
}

// Len returns how many keys are held right now (expired holdings not yet
// reclaimed are reclaimed first). It is meant for tests and metrics.
func (l *Locker) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reclaim(l.clock())
	return len(l.held)
}

// reclaim drops every holding whose deadline has passed, and every
// idempotency record whose retention has. l.mu is held.
func (l *Locker) reclaim(now time.Duration) {
	for len(l.heap) > 0 && now >= l.heap[0].deadline {
		le := l.heap.pop()
		delete(l.held, le.key)
		le.lose()
	}
	for len(l.rheap) > 0 && now >= l.rheap[0].deadline {
		rec := l.rheap.pop()
		delete(l.records, rec.key)
	}
}

// owns reports whether le is the live holding of its key, dropping it if it
// expired. A lease is in the heap (index >= 0) exactly while it is its key's
// holding, so no map lookup is needed. l.mu is held.
func (l *Locker) owns(le *lease, now time.Duration) bool {
	if le.index < 0 {
		return false
	}
	if now >= le.deadline {
		l.heap.remove(le)
		delete(l.held, le.key)
		le.lose()
		return false
	}
	return true
}

// lease is one holding. It is also the map and heap entry, so a take
// allocates once.
type lease struct {
	l        *Locker
	key      string
	token    uint64
	deadline time.Duration // on l.clock; guarded by l.mu
	index    int           // position in l.heap, -1 when not held; guarded by l.mu
	record   []byte        // set only on entries of l.records (store.go)
	fp       []byte        // the fingerprint of ClaimFingerprint; fixed before the lease is shared
	lost     chan struct{} // made by Lost, closed when the holding ends other than by the lease; guarded by l.mu
	ended    bool          // the lease's own Release or Complete ended it; guarded by l.mu
}

// lose closes the Lost channel of a holding that ended other than by its
// own Release or Complete (expiry, ForceRelease). l.mu is held.
func (le *lease) lose() {
	if le.lost != nil && !le.ended {
		le.ended = true
		close(le.lost)
	}
}

// Lost returns a channel that is closed when the lease is found lost:
// forced out by [Locker.ForceRelease] (at that moment), or found expired by
// a later call. After the lease's own Release or Complete it is never
// closed. It makes the lease a lock.LossNotifier, so that lock.KeepAlive
// cancels its context at once on a ForceRelease.
func (le *lease) Lost() <-chan struct{} {
	l := le.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if le.lost == nil {
		le.lost = make(chan struct{})
		if le.index < 0 {
			le.lose()
		}
	}
	return le.lost
}

func (le *lease) Key() string   { return le.key }
func (le *lease) Token() uint64 { return le.token }

// Deadline returns when the lease ends unless refreshed or released.
func (le *lease) Deadline() time.Time {
	le.l.mu.Lock()
	defer le.l.mu.Unlock()
	return le.l.base.Add(le.deadline)
}

func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	l := le.l
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	if !l.owns(le, now) {
		return lock.ErrNotHeld
	}
	le.deadline = later(now, ttl)
	l.heap.fix(le)
	return nil
}

func (le *lease) Release(ctx context.Context) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	l := le.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.owns(le, l.clock()) {
		return lock.ErrNotHeld
	}
	l.heap.remove(le)
	delete(l.held, le.key)
	le.ended = true
	l.wakeFirst(le.key)
	return nil
}
