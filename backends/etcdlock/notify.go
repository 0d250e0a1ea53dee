package etcdlock

import (
	"context"
	"sync"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Subscribe returns a subscription to releases of key, which lock.Acquire
// uses to wait without polling. It makes no request: the first Wait opens an
// etcd watch on the lock key from the revision after the one the failed
// attempt saw, so a release in between is replayed from etcd's history and
// never missed. Later Waits reuse that watch. All subscriptions of a Locker
// share one watch stream.
//
// A lock key is deleted by its holder's release and by etcd itself when the
// holder's lease expires, so expiry wakes waiters too.
func (l *Locker) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	if err := l.gate.CheckKey(ctx, "subscribe", key); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.WithoutCancel(ctx)))
	return &subscription{l: l, lk: l.lockKey(key), ctx: wctx, cancel: cancel}, nil
}

// subscription is one waiter's view of a lock key's deletions.
type subscription struct {
	l      *Locker
	lk     string
	ctx    context.Context // the watch's; cancelled by Close
	cancel context.CancelFunc

	mu       sync.Mutex // guards closed against a concurrent Close
	closed   bool
	wch      clientv3.WatchChan // nil when no watch is open
	wcancel  context.CancelFunc
	from     int64 // the watch delivers every deletion after this revision
	reported int64 // the latest deletion Wait returned for
}

// Wait blocks until the lock key was deleted after the revision in
// held.Version, or until ctx ends. With a nil held (or Version 0) it waits
// for a deletion not reported before; the first such Wait returns at once,
// since it cannot know what happened before it. A nil return means "try
// again": the watch breaking (compaction of the revision to watch from, a
// lost leader, a closed Locker) returns nil too, so the caller's next
// attempt starts a new watch from a newer revision.
func (s *subscription) Wait(ctx context.Context, held *lock.NotAcquiredError) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return &driver.Error{Backend: errs, Op: "wait", Err: lock.ErrClosed, Detail: "the subscription is closed"}
	}
	var v int64
	if held != nil {
		v = int64(held.Version)
	}
	switch {
	case v > 0 && s.reported > v:
		// Already seen a deletion after that attempt.
		s.mu.Unlock()
		return nil
	case v > 0 && (s.wch == nil || v < s.from):
		s.open(v)
	case v == 0 && s.wch == nil:
		s.mu.Unlock()
		if err := s.openNow(ctx); err != nil {
			return err
		}
		return nil // spurious: what happened before the watch is unknown
	case v == 0:
		v = s.reported
	}
	wch := s.wch
	s.mu.Unlock()

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil || wr.Canceled {
				s.mu.Lock()
				s.stop()
				s.mu.Unlock()
				return nil
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete && ev.Kv.ModRevision > v {
					s.mu.Lock()
					s.reported = max(s.reported, ev.Kv.ModRevision)
					s.mu.Unlock()
					return nil
				}
			}
		}
	}
}

// open starts a watch of deletions after revision v. s.mu is held.
func (s *subscription) open(v int64) {
	s.stop()
	wctx, cancel := context.WithCancel(s.ctx)
	s.wch = s.l.watcher.Watch(wctx, s.lk, clientv3.WithRev(v+1), clientv3.WithFilterPut())
	s.wcancel = cancel
	s.from = v
}

// openNow starts a watch from etcd's current revision and waits until etcd
// confirms it.
func (s *subscription) openNow(ctx context.Context) error {
	s.mu.Lock()
	s.stop()
	wctx, cancel := context.WithCancel(s.ctx)
	wch := s.l.watcher.Watch(wctx, s.lk, clientv3.WithFilterPut(), clientv3.WithCreatedNotify())
	s.wch, s.wcancel = wch, cancel
	s.mu.Unlock()
	select {
	case <-ctx.Done():
		s.mu.Lock()
		if s.wch == wch {
			s.stop() // its start is unknown: never reuse it
		}
		s.mu.Unlock()
		return ctx.Err()
	case wr, ok := <-wch:
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.wch != wch {
			return nil // closed meanwhile
		}
		if !ok || wr.Err() != nil || !wr.Created {
			s.stop()
			return nil
		}
		s.from = wr.Header.Revision
		s.reported = max(s.reported, s.from)
		return nil
	}
}

// stop ends the open watch, if any. s.mu is held.
func (s *subscription) stop() {
	if s.wcancel != nil {
		s.wcancel()
	}
	s.wch, s.wcancel = nil, nil
}

// Close ends the subscription and its watch. Safe to call more than once.
func (s *subscription) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.stop()
		s.cancel()
	}
	return nil
}
