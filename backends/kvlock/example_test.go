package kvlock_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"slices"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/kvlock"
)

// memKV is a key-value store in memory, written the way a backend author
// writes the KV of a real store: each method is one atomic step (here under
// one mutex; on a server, one command, script or transaction), TTLs are the
// store's own, and changes are reported to watchers. It is the reference
// implementation that kvlock's tests run both conformance suites on.
type memKV struct {
	mu       sync.Mutex
	entries  map[string]entry
	counters map[string]uint64
	watchers map[string][]*func()
}

type entry struct {
	value   []byte
	expires time.Time
}

func newMemKV() *memKV {
	return &memKV{entries: map[string]entry{}, counters: map[string]uint64{}, watchers: map[string][]*func(){}}
}

// get returns key's live entry. m.mu is held.
func (m *memKV) get(key string) (entry, bool) {
	e, ok := m.entries[key]
	if ok && !time.Now().Before(e.expires) {
		delete(m.entries, key)
		return entry{}, false
	}
	return e, ok
}

// changed tells key's watchers. m.mu is held.
func (m *memKV) changed(key string) {
	for _, f := range m.watchers[key] {
		(*f)()
	}
}

// Get reads key (kvlock.Reader: the Locker's Admin methods need it).
func (m *memKV) Get(ctx context.Context, key string) ([]byte, time.Duration, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.get(key)
	if !ok {
		return nil, 0, false, nil
	}
	return bytes.Clone(e.value), time.Until(e.expires), true, nil
}

// Ping answers at once: the store is in memory (lock.Pinger).
func (m *memKV) Ping(ctx context.Context) error { return ctx.Err() }

func (m *memKV) Create(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, []byte, time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.get(key); ok {
		return false, bytes.Clone(e.value), time.Until(e.expires), nil
	}
	m.entries[key] = entry{bytes.Clone(value), time.Now().Add(ttl)}
	m.changed(key)
	return true, nil, 0, nil
}

func (m *memKV) CompareAndDelete(ctx context.Context, key string, old []byte) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.get(key); !ok || !bytes.Equal(e.value, old) {
		return false, nil
	}
	delete(m.entries, key)
	m.changed(key)
	return true, nil
}

func (m *memKV) CompareAndExpire(ctx context.Context, key string, old []byte, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.get(key)
	if !ok || !bytes.Equal(e.value, old) {
		return false, nil
	}
	e.expires = time.Now().Add(ttl)
	m.entries[key] = e
	return true, nil
}

func (m *memKV) CompareAndSwap(ctx context.Context, key string, old, value []byte, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.get(key); !ok || !bytes.Equal(e.value, old) {
		return false, nil
	}
	m.entries[key] = entry{bytes.Clone(value), time.Now().Add(ttl)}
	m.changed(key)
	return true, nil
}

func (m *memKV) Increment(ctx context.Context, key string) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.counters[key]++
	return m.counters[key], nil
}

// Watch makes the Locker a lock.Notifier: lock.Acquire then sleeps until a
// release instead of polling.
func (m *memKV) Watch(ctx context.Context, key string, changed func()) (func(), error) {
	f := &changed
	m.mu.Lock()
	m.watchers[key] = append(m.watchers[key], f)
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.watchers[key] = slices.DeleteFunc(m.watchers[key], func(g *func()) bool { return g == f })
		if len(m.watchers[key]) == 0 {
			delete(m.watchers, key)
		}
	}, nil
}

func Example() {
	backend, err := kvlock.New(newMemKV())
	if err != nil {
		log.Fatal(err) // a nil KV or a bad option
	}
	defer backend.Close()
	ctx := context.Background()

	// A lock.
	err = lock.Do(ctx, backend, "invoice/42", func(ctx context.Context, lease lock.Lease) error {
		fmt.Println("sending invoice 42")
		return nil
	})
	if err != nil {
		fmt.Println(err)
	}

	// An idempotency record: the first Claim runs the work, the next
	// replays its result.
	le, _, _ := backend.Claim(ctx, "payment/7", time.Minute)
	_ = backend.Complete(ctx, le, []byte("paid"), 24*time.Hour)
	_, rec, _ := backend.Claim(ctx, "payment/7", time.Minute)
	fmt.Printf("replayed %q\n", rec)
	// Output:
	// sending invoice 42
	// replayed "paid"
}
