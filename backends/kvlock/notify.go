package kvlock

import (
	"context"
	"sync"

	"github.com/idemlock/lock"
)

// notifying is a Locker on a KV that implements Watcher.
type notifying struct {
	*Locker
	w Watcher
}

// Subscribe watches key's lock key; every change wakes the subscription.
func (n *notifying) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	if err := n.gate.CheckKey(ctx, "subscribe", key); err != nil {
		return nil, err
	}
	s := &subscription{ch: make(chan struct{}, 1)}
	stop, err := n.w.Watch(ctx, n.lockKey(key), s.notify)
	if err != nil {
		return nil, opError("subscribe", key, err)
	}
	s.stop = stop
	return s, nil
}

// subscription keeps at most one pending change: a change before Wait is
// kept, not missed.
type subscription struct {
	ch   chan struct{}
	once sync.Once
	stop func()
}

func (s *subscription) notify() {
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

func (s *subscription) Wait(ctx context.Context, _ *lock.NotAcquiredError) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	select {
	case <-s.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *subscription) Close() error {
	s.once.Do(s.stop)
	return nil
}
