package consullock

import (
	"context"
	"sync/atomic"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
)

// Subscribe returns a subscription to releases of key; lock.Acquire uses
// it to wait with Consul blocking queries instead of polling. It makes no
// request and starts no goroutine: each Wait is one or a few blocking
// queries on the caller's goroutine.
func (l *Locker) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	if err := l.gate.CheckKey(ctx, "subscribe", key); err != nil {
		return nil, err
	}
	return &subscription{l: l, key: key, path: l.lockPath(key)}, nil
}

type subscription struct {
	l      *Locker
	key    string
	path   string
	closed atomic.Bool
}

// Wait blocks until the key is free, or was changed since the attempt that
// returned held (released and perhaps taken again), or ctx ends. It starts
// a blocking query at held.Version, the ModifyIndex the attempt saw, so a
// release after the attempt is never missed; without it (held nil or
// Version 0) it first reads the key as it is now. After a refusal for
// lock-delay (Version set, Remaining 0) it waits for any change of the key
// rather than return at once; lock.Acquire bounds that wait by its polling
// interval, since the end of a lock-delay sends no event.
func (s *subscription) Wait(ctx context.Context, held *lock.NotAcquiredError) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	if s.closed.Load() {
		return errs.InvalidArgument("Wait on a closed subscription")
	}
	var want uint64 // the holding the attempt saw
	// delayed: the attempt found the key absent but refused by lock-delay
	// (the only case with a Version and no Remaining, see heldError); a
	// key still absent is then no news, so wait for a change.
	var delayed bool
	if held != nil {
		want = held.Version
		delayed = held.Version != 0 && held.Remaining == 0
	}
	index := want
	for {
		pair, meta, err := s.l.client.KV().Get(s.path, (&api.QueryOptions{WaitIndex: index}).WithContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return errs.OpError("wait", s.key, apiError(err))
		}
		if pair == nil && delayed && meta.LastIndex >= index {
			index = meta.LastIndex
			continue
		}
		if pair == nil || pair.Session == "" || want != 0 && pair.ModifyIndex != want {
			return nil
		}
		want = pair.ModifyIndex
		if meta.LastIndex < index {
			return nil // the agent's indexes went back (a restart): look again
		}
		index = meta.LastIndex
	}
}

// Close ends the subscription. It holds nothing on the server.
func (s *subscription) Close() error {
	s.closed.Store(true)
	return nil
}
