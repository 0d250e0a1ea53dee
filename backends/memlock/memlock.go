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
// no polling, no thundering herd and no goroutine per lock.
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
	"net/url"
	"sync"
	"time"

	"github.com/idemlock/lock"
)

func init() {
	lock.Register("mem", func(_ context.Context, u *url.URL) (lock.Backend, error) {
		if u.Host != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return nil, &urlError{u.Redacted()}
		}
		return New(), nil
	})
}

type urlError struct{ url string }

func (e *urlError) Error() string {
	return "memlock: the mem URL takes no host, path or options: " + e.url
}
func (e *urlError) Unwrap() error { return lock.ErrInvalidURL }

// Locker is an in-process lock table. The zero value is not usable; call
// [New]. A Locker is safe for concurrent use.
type Locker struct {
	mu      sync.Mutex
	held    map[string]*lease     // current holding per key, possibly expired
	heap    deadlineHeap          // every holding in held, by deadline
	waiters map[string][]*waitSub // subscriptions per key
	next    uint64                // last fencing token handed out
	now     func() time.Time      // the clock; time.Now
	records map[string]*lease     // completed idempotency records (store.go)
	rheap   deadlineHeap          // every entry in records, by retention end
}

// Option configures a Locker. There are none yet; the parameter keeps New's
// shape the same as the networked backends'.
type Option func(*Locker)

// New returns a ready, empty Locker.
func New(opts ...Option) *Locker {
	l := &Locker{
		held:    make(map[string]*lease),
		waiters: make(map[string][]*waitSub),
		now:     time.Now,
		records: make(map[string]*lease),
	}
	for _, o := range opts {
		if o != nil {
			o(l)
		}
	}
	return l
}

// Close does nothing: a memory Locker holds no outside resources. It exists
// so that *Locker is a lock.Backend.
func (l *Locker) Close() error { return nil }

// TryAcquire takes key for ttl if no live lease holds it.
func (l *Locker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if err := lock.CheckArgs(ctx, key, ttl); err != nil {
		return nil, err
	}
	l.mu.Lock()
	now := l.now()
	l.reclaim(now)
	if cur := l.held[key]; cur != nil {
		// reclaim removed every expired holding, so cur is live.
		remaining := cur.deadline.Sub(now)
		l.mu.Unlock()
		return nil, &lock.NotAcquiredError{Key: key, Remaining: remaining}
	}
	l.next++
	le := &lease{l: l, key: key, token: l.next, deadline: now.Add(ttl), index: -1}
	l.held[key] = le
	l.heap.push(le)
	l.mu.Unlock()
	return le, nil
}

// Len returns how many keys are held right now (expired holdings not yet
// reclaimed are reclaimed first). It is meant for tests and metrics.
func (l *Locker) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reclaim(l.now())
	return len(l.held)
}

// reclaim drops every holding whose deadline has passed, and every
// idempotency record whose retention has. l.mu is held.
func (l *Locker) reclaim(now time.Time) {
	for len(l.heap) > 0 && !now.Before(l.heap[0].deadline) {
		le := l.heap.pop()
		delete(l.held, le.key)
	}
	for len(l.rheap) > 0 && !now.Before(l.rheap[0].deadline) {
		rec := l.rheap.pop()
		delete(l.records, rec.key)
	}
}

// owns reports whether le is the live holding of its key, dropping it if it
// expired. l.mu is held.
func (l *Locker) owns(le *lease, now time.Time) bool {
	if l.held[le.key] != le || le.index < 0 {
		return false
	}
	if !now.Before(le.deadline) {
		l.heap.remove(le)
		delete(l.held, le.key)
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
	deadline time.Time // guarded by l.mu
	index    int       // position in l.heap, -1 when not held; guarded by l.mu
	record   []byte    // set only on entries of l.records (store.go)
}

func (le *lease) Key() string   { return le.key }
func (le *lease) Token() uint64 { return le.token }

// Deadline returns when the lease ends unless refreshed or released.
func (le *lease) Deadline() time.Time {
	le.l.mu.Lock()
	defer le.l.mu.Unlock()
	return le.deadline
}

func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	if err := lock.ValidateTTL(ttl); err != nil {
		return err
	}
	l := le.l
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.owns(le, now) {
		return lock.ErrNotHeld
	}
	le.deadline = now.Add(ttl)
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
	if !l.owns(le, l.now()) {
		return lock.ErrNotHeld
	}
	l.heap.remove(le)
	delete(l.held, le.key)
	l.wakeFirst(le.key)
	return nil
}
