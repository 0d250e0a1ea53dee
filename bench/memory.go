package bench

import (
	"context"
	"sync"
	"testing"

	"github.com/idemlock/lock/backends/memlock"
)

func memoryBackend() Backend {
	return Backend{
		Name: "memory",
		Env:  func(testing.TB) Env { return Env{} },
		Libs: []Lib{
			{
				Name: "idemlock",
				Desc: "idemlock memlock: a map under one mutex, with TTLs, fencing tokens and waiters woken by the release",
				Setup: func(testing.TB, Env) func() Client {
					l := memlock.New() // one table: in-process locks exclude only goroutines sharing it
					return func() Client { return idemClient{l} }
				},
			},
			{
				Name:  "sync-mutex-map",
				Label: "map of sync.Mutex",
				Desc:  "a map of *sync.Mutex under one sync.Mutex (no TTL, no token, Lock ignores the context)",
				Setup: func(testing.TB, Env) func() Client {
					t := &mutexMap{m: map[string]*sync.Mutex{}}
					return func() Client { return t }
				},
			},
		},
	}
}

// mutexMap is the usual in-process keyed lock.
type mutexMap struct {
	mu sync.Mutex
	m  map[string]*sync.Mutex
}

func (t *mutexMap) get(key string) *sync.Mutex {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.m[key]
	if m == nil {
		m = new(sync.Mutex)
		t.m[key] = m
	}
	return m
}

func (t *mutexMap) Try(_ context.Context, key string) (Held, bool, error) {
	m := t.get(key)
	if !m.TryLock() {
		return nil, false, nil
	}
	return mutexHeld{m}, true, nil
}

func (t *mutexMap) Lock(_ context.Context, key string) (Held, error) {
	m := t.get(key)
	m.Lock()
	return mutexHeld{m}, nil
}

type mutexHeld struct{ m *sync.Mutex }

func (h mutexHeld) Release(context.Context) error {
	h.m.Unlock()
	return nil
}
