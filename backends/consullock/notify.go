package consullock

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
)

// Subscribe returns a subscription to releases of key; lock.Acquire uses
// it to wait with Consul blocking queries instead of polling. It makes no
// request and starts no goroutine: each Wait is one or a few blocking
// queries on the caller's goroutine.
func (l *Locker) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	if err := lock.CheckContext(ctx); err != nil {
		return nil, err
	}
	if err := lock.ValidateKey(key); err != nil {
		return nil, err
	}
	if err := l.usable(); err != nil {
		return nil, err
	}
	return &subscription{l: l, path: l.lockPath(key)}, nil
}

type subscription struct {
	l      *Locker
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
		return fmt.Errorf("%w: consullock: Wait on a closed subscription", lock.ErrInvalidArgument)
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
			return fmt.Errorf("consullock: waiting for a release: %w", apiError(err))
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

// watcher is the blocking query behind a lease's Lost channel.
type watcher struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// halt stops the watch and waits until its goroutine returned.
func (w *watcher) halt() {
	w.cancel()
	<-w.done
}

// watch starts watching le's key. le.mu is held.
func (l *Locker) watch(le *lease) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{cancel: cancel, done: make(chan struct{})}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		cancel()
		close(w.done)
		return w
	}
	l.watchers[w] = struct{}{}
	l.mu.Unlock()
	go func() {
		defer func() {
			l.mu.Lock()
			delete(l.watchers, w)
			l.mu.Unlock()
			close(w.done)
		}()
		le.mu.Lock()
		index := le.index
		le.mu.Unlock()
		w.run(ctx, le, index)
	}()
	return w
}

// run follows le's key with blocking queries until it sees the key deleted
// or locked by a session that is not le's, then marks le lost.
//
// Every read is consistent (the leader confirms its leadership and has
// applied every committed write before it answers), and a blocking query
// never waits from an index below the lease's own latest write: a lagging
// server, such as a leader just elected, could otherwise answer with the
// key as it was before that write (absent, or held by the session a move
// left), and the watch would destroy a session that holds the key.
func (w *watcher) run(ctx context.Context, le *lease, index uint64) {
	kv := le.l.client.KV()
	retry := 10 * time.Millisecond
	pause := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for {
		if index != 0 {
			le.mu.Lock()
			index = max(index, le.index)
			le.mu.Unlock()
		}
		pair, meta, err := kv.Get(le.path, (&api.QueryOptions{WaitIndex: index, RequireConsistent: true}).WithContext(ctx))
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// The agent may be restarting: look at its current state once
			// it answers (a consistent read, so index 0 is safe).
			// KeepAlive's own deadline covers the gap.
			index = 0
			if !pause(retry) {
				return
			}
			retry = min(2*retry, time.Second)
			continue
		}
		retry = 10 * time.Millisecond
		le.mu.Lock()
		state, sess, writing := le.state, le.sess, le.writing
		le.mu.Unlock()
		if state != held {
			return
		}
		if pair == nil || pair.Session != sess.id {
			if writing {
				// The lease's own write (a move to another session, a
				// release) changed the key: look again once it is done.
				index = 0
				if !pause(5 * time.Millisecond) {
					return
				}
				continue
			}
			le.mu.Lock()
			if le.w == w {
				le.w = nil // lose must not wait for this goroutine
			}
			le.mu.Unlock()
			le.lose(sess)
			return
		}
		if meta.LastIndex < index {
			index = 0 // the agent's indexes went back (a restart): look again
			continue
		}
		index = meta.LastIndex
	}
}
