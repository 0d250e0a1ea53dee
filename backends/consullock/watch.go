package consullock

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock/driver"
)

// watchers owns the goroutines behind the leases' Lost channels: its
// mutex guards only the set of those running, so that close can stop
// them all and no new one starts after it.
type watchers struct {
	client *api.Client

	mu     sync.Mutex
	closed bool
	set    map[*watcher]struct{}
}

func newWatchers(client *api.Client) *watchers {
	return &watchers{client: client, set: make(map[*watcher]struct{})}
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

// watch starts watching le's key (a no-op after close). le.mu is held.
func (ws *watchers) watch(le *lease) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{cancel: cancel, done: make(chan struct{})}
	ws.mu.Lock()
	if ws.closed {
		ws.mu.Unlock()
		cancel()
		close(w.done)
		return w
	}
	ws.set[w] = struct{}{}
	ws.mu.Unlock()
	go func() {
		defer func() {
			ws.mu.Lock()
			delete(ws.set, w)
			ws.mu.Unlock()
			close(w.done)
		}()
		le.mu.Lock()
		index := le.index
		le.mu.Unlock()
		w.run(ctx, ws.client.KV(), le, index)
	}()
	return w
}

// close stops every watch and waits until their goroutines returned.
func (ws *watchers) close() {
	ws.mu.Lock()
	ws.closed = true
	all := make([]*watcher, 0, len(ws.set))
	for w := range ws.set {
		all = append(all, w)
	}
	ws.mu.Unlock()
	for _, w := range all {
		w.halt()
	}
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
func (w *watcher) run(ctx context.Context, kv *api.KV, le *lease, index uint64) {
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
		sess, writing := le.sess, le.writing
		le.mu.Unlock()
		switch le.State() {
		case driver.Released, driver.Lost:
			return
		case driver.Releasing:
			writing = true // a Release or Complete is in flight
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
