package etcdlock

import (
	"context"

	"github.com/idemlock/lock"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var _ lock.LossNotifier = (*lease)(nil)

// Lost returns a channel that is closed when the lease's lock key is
// deleted other than by the lease's own Release or Complete: deleted by
// hand or by ForceRelease, or by etcd when the lease expired. The first call
// opens a watch on the key from the revision after the take (on the
// Locker's shared watch stream), so lock.KeepAlive learns of the loss
// within one watch event instead of at its next refresh. The watch ends
// with the lease's Release or Complete, with the key's deletion and with
// Locker.Close; if it breaks (the revision after the take was compacted, or
// the Locker was closed) the channel is left open and renewal alone tells.
func (le *lease) Lost() <-chan struct{} {
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.lost != nil {
		return le.lost
	}
	le.lost = make(chan struct{})
	if le.done {
		if !le.ended {
			close(le.lost)
		}
		return le.lost
	}
	if le.l.usable() != nil {
		return le.lost
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	le.unwatch = cancel
	go le.watchLoss(ctx, cancel)
	return le.lost
}

// watchLoss opens the watch and closes le.lost on the first deletion of the
// lock key unless the lease ended it itself. It opens the watch on its own
// goroutine because Watch waits until the watch stream is set up, which a
// partition can delay for as long as it lasts: Lost must return at once,
// and must not hold le.mu meanwhile (Deadline and Refresh need it).
func (le *lease) watchLoss(ctx context.Context, cancel context.CancelFunc) {
	defer cancel()
	wch := le.l.watcher.Watch(ctx, le.lk, clientv3.WithRev(int64(le.token)+1), clientv3.WithFilterPut())
	for resp := range wch {
		if resp.Err() != nil {
			return
		}
		for _, ev := range resp.Events {
			if ev.Type != mvccpb.DELETE {
				continue
			}
			// A Release or Complete holds le.mu until it has set ended,
			// so its own deletion is never taken for a loss.
			le.mu.Lock()
			if !le.ended {
				le.done = true
				close(le.lost)
			}
			le.mu.Unlock()
			return
		}
	}
}

// stopLossWatch ends the watch of Lost after the lease ended the holding
// itself. le.mu is held.
func (le *lease) stopLossWatch() {
	le.ended = true
	if le.unwatch != nil {
		le.unwatch()
	}
}
