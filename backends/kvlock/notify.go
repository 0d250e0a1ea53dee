package kvlock

import (
	"context"
	"sync"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
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
	s := &subscription{wake: driver.NewWakeup()}
	stop, err := n.w.Watch(ctx, n.lockKey(key), s.wake.Notify)
	if err != nil {
		return nil, opError("subscribe", key, err)
	}
	s.stop = stop
	return s, nil
}

// subscription keeps at most one pending change (driver.Wakeup): a
// change before Wait is kept, not missed.
type subscription struct {
	wake driver.Wakeup
	once sync.Once
	stop func()
}

func (s *subscription) Wait(ctx context.Context, _ *lock.NotAcquiredError) error {
	return s.wake.Wait(ctx)
}

func (s *subscription) Close() error {
	s.once.Do(s.stop)
	return nil
}
