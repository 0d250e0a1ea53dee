package memlock

import (
	"context"
	"slices"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// waitSub is one subscription to releases of one key: a one-slot
// driver.Wakeup, so a release that happens before Wait is called is kept,
// not missed.
type waitSub struct {
	l      *Locker
	key    string
	wake   driver.Wakeup
	closed bool // guarded by l.mu
}

// Subscribe registers for releases of key; lock.Acquire uses it to wait
// without polling. A release of key wakes the longest-waiting subscriber;
// one that closes while the key is free (it was woken and gave up instead
// of taking the key) wakes the next, so a release is never stranded.
// Completing an idempotency record wakes every subscriber.
func (l *Locker) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	if err := l.gate.CheckKey(ctx, "subscribe", key); err != nil {
		return nil, err
	}
	s := &waitSub{l: l, key: key, wake: driver.NewWakeup()}
	l.mu.Lock()
	l.waiters[key] = append(l.waiters[key], s)
	l.mu.Unlock()
	return s, nil
}

// wakeFirst hands a release of key to its longest-waiting subscriber.
// l.mu is held.
func (l *Locker) wakeFirst(key string) {
	if subs := l.waiters[key]; len(subs) > 0 {
		subs[0].wake.Notify()
	}
}

// Wait returns when key was released since Subscribe or the previous Wait,
// or when ctx ends.
func (s *waitSub) Wait(ctx context.Context, _ *lock.NotAcquiredError) error {
	return s.wake.Wait(ctx)
}

// Close unregisters the subscription.
func (s *waitSub) Close() error {
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	subs := slices.DeleteFunc(l.waiters[s.key], func(w *waitSub) bool { return w == s })
	if len(subs) == 0 {
		delete(l.waiters, s.key)
		return nil
	}
	l.waiters[s.key] = subs
	if s.wake.Take() {
		// A release was handed to this subscriber, which leaves without
		// having waited for it: pass it on, or the next waiter would sleep
		// until the holder's TTL although the key is free.
		l.wakeFirst(s.key)
	} else if cur := l.held[s.key]; cur == nil || l.clock() >= cur.deadline {
		// The wake-up may have been taken by Wait and then not acted on
		// (the waiter's context ended before it tried the key): if the key
		// is free, the next waiter must hear of it.
		l.wakeFirst(s.key)
	}
	return nil
}
