package etcdlock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/idemlock/lock"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Queued waiting ([WithQueue]), in the manner of etcd's concurrency.Mutex.
//
// A waiter queues by putting an entry key "<lock key>\xff<id>" bound to
// the Locker's queue lease (one per Locker, kept alive in the background,
// revoked by Close): the entry's CreateRevision is its place. No lock key
// contains the byte 0xff (keys are UTF-8), so the entries of a key are
// exactly the keys with the prefix "<lock key>\xff". A ticket's take is one
// transaction: the ordinary take (the lock key absent, put with a pooled
// lease) guarded by two more comparisons, that the ticket's entry still
// exists and that every entry has a CreateRevision not below its own (a
// range comparison over the prefix: no live waiter is ahead); it deletes
// the entry in the same transaction. A refused take reads the holder, the
// ticket's entry and its predecessor (the entry created just before it).
// Of a Locker's attempts on one key at once, only the first and that of a
// ticket woken at the head carry the take and its pooled lease (see
// startTake): the others could not win, and only join the queue.
//
// A ticket waits until the lock key is free and its predecessor is gone,
// judging from the events of one watch per Locker and key (the lock key
// and its entries, shared by the Locker's tickets, kept for a second after
// the last one leaves). A release deletes the lock key: only the head,
// whose predecessor is gone, attempts a take, so a hand-off costs the
// release, the head's take and the next arrival's take, whatever the number
// of waiters. A ticket that leaves deletes its entry, which lets the next
// one go if the key is free; a waiter that dies loses its entry with the
// queue lease, queueLeaseTTL after its last keep-alive.
//
// Where a queued hand-off's time goes (issue 19; bench Scaling8: 8
// waiters on 8 Lockers, 2 cores, the etcd WAL synced): the release's
// round trip (its deletion reaching the head's watch) and the head's
// take, 1.5 to 2 ms each. The head's own work between the event and
// sending the take is about 40 µs; a take that renews its pooled lease
// in line is 2% of hand-offs. Fan-out costs something: every Locker with
// a waiter hears every event on the key (24 watch responses per hand-off
// at 8 Lockers, 3 at one), and the head hears the release about 0.1 ms
// after the first Locker does. But unqueued waiting's lower p50 there
// (3.4 ms against 3.8) is not a faster wake-up. Its woken winners took
// 4.2 to 4.3 ms at the median. In 60% of hand-offs the winner was
// instead the newest arrival, whose attempt was already under way when
// the release was sent: it barged in, which a queue forbids. When the
// arrivals' attempts were over before the release (a 5 ms hold),
// barging fell to 20% and the two p50s were about equal. The bench's
// hand-off workloads now release only once every waiter has been waiting
// twice its library's refused attempt: queued ÷ unqueued p50 at 8
// waiters is then 0.97 to 1.01 (median of same-round ratios).

// queueLeaseTTL is the TTL of a Locker's queue lease, in seconds: how long
// a dead process's waiters stay in the queue.
const queueLeaseTTL = 5

// queueLinger is how long a Locker keeps a key's watch after its last
// ticket left, so that a waiter coming back soon (a worker looping on a
// hot key) finds it open.
const queueLinger = time.Second

// WithQueue makes [lock.Acquire] wait in a first-come-first-served queue
// per key (the Locker implements [lock.Queuer]): only the head of the queue
// attempts a take when the key is released, so a hand-off costs about
// three requests whatever the number of waiters. The price: a Locker that
// queues keeps one lease of its own alive (a keep-alive every
// queueLeaseTTL/3 seconds while it exists), and a waiting Acquire puts an
// entry key that its take deletes. TryAcquire never looks at the queue.
func WithQueue() Option {
	return func(c *config) error { c.queue = true; return nil }
}

// errQueueOff is Queue's error on a Locker made without WithQueue.
var errQueueOff = fmt.Errorf("etcdlock: queued waiting is off (see WithQueue): %w", errors.ErrUnsupported)

// queueState is a Locker's queue lease and key watches.
type queueState struct {
	mu       sync.Mutex
	id       clientv3.LeaseID   // 0 when none is alive
	stopKA   context.CancelFunc // stops the keep-alive of id
	ctx      context.Context    // the Locker's background context; nil until first use
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	watches  map[string]*keyWatch
	attempts map[string]int // tickets' attempts under way, by lock key (startTake)
}

// leaseID returns the Locker's live queue lease, granting one if needed.
func (l *Locker) queueLease(ctx context.Context) (clientv3.LeaseID, error) {
	q := &l.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.id != 0 {
		return q.id, nil
	}
	if q.ctx == nil {
		q.ctx, q.cancel = context.WithCancel(context.Background())
	}
	if q.ctx.Err() != nil {
		return 0, lock.ErrClosed
	}
	resp, err := l.leases.Grant(ctx, queueLeaseTTL)
	if err != nil {
		return 0, err
	}
	kctx, stop := context.WithCancel(q.ctx)
	ch, err := l.leases.KeepAlive(kctx, resp.ID)
	if err != nil {
		stop()
		return 0, err
	}
	q.id, q.stopKA = resp.ID, stop
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		for range ch { //nolint:revive // drained: the client sends the keep-alives
		}
		q.mu.Lock()
		if q.id == resp.ID {
			q.id = 0 // lost or closed: the next ticket grants another
		}
		q.mu.Unlock()
	}()
	return resp.ID, nil
}

// abandonQueueLease stops keeping the queue lease id alive, so that every
// entry on it expires within queueLeaseTTL: the way out when an entry
// could not be deleted (a ticket's leave failed), which would otherwise
// stay ahead of every later waiter for as long as the Locker lives. The
// Locker's other tickets find their entries gone and queue again.
func (l *Locker) abandonQueueLease(id clientv3.LeaseID) {
	q := &l.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.id == id && id != 0 {
		q.stopKA()
		q.id = 0
	}
}

// closeQueue stops the queue's background work and revokes its lease.
func (l *Locker) closeQueue() {
	q := &l.q
	q.mu.Lock()
	id, cancel := q.id, q.cancel
	if q.ctx == nil {
		q.ctx, q.cancel = context.WithCancel(context.Background())
		cancel = q.cancel
	}
	q.mu.Unlock()
	cancel()
	q.wg.Wait()
	if id != 0 {
		ctx, done := context.WithTimeout(context.Background(), l.cfg.timeout)
		_, _ = l.leases.Revoke(ctx, id)
		done()
	}
}

// keyWatch is one Locker's watch of a lock key and its queue entries,
// shared by the Locker's tickets for that key.
type keyWatch struct {
	l    *Locker
	lk   string
	from int64 // events after this revision are delivered
	// Guarded by l.q.mu: the revision and kind of the latest event on the
	// lock key, and the revision of the latest deletion of each entry (forgotten in bulk past
	// maxDeletes, which makes every registration a stale one).
	lockRev  int64
	lockFree bool // the lock key was deleted at lockRev
	deleted  map[string]int64
	forgotAt int64
	cancel   context.CancelFunc
	tickets  map[*ticket]struct{} // guarded by l.q.mu
	linger   *time.Timer          // guarded by l.q.mu
	dead     bool                 // guarded by l.q.mu: the watch ended
}

// watchFor registers t on its key's watch, opening one that delivers every
// event after revision v if needed, and brings t's view up to date with the
// events the watch delivered before. It reports whether the watch covers
// every event after v (false: the caller tries again at once).
func (l *Locker) watchFor(t *ticket, v int64) bool {
	q := &l.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ctx == nil || q.ctx.Err() != nil {
		return false
	}
	w := q.watches[t.lk]
	if w == nil || w.dead {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(q.ctx))
		w = &keyWatch{l: l, lk: t.lk, from: v, cancel: cancel, tickets: map[*ticket]struct{}{}}
		if q.watches == nil {
			q.watches = map[string]*keyWatch{}
		}
		q.watches[t.lk] = w
		wch := l.watcher.Watch(wctx, t.lk, clientv3.WithPrefix(), clientv3.WithRev(v+1))
		q.wg.Add(1)
		go w.run(wch)
	}
	if w.linger != nil {
		w.linger.Stop()
		w.linger = nil
	}
	w.tickets[t] = struct{}{}
	t.w = w
	if w.from > v || w.forgotAt > v {
		return false // events after v may have gone unseen
	}
	// The watch delivered every event after v; those before t registered
	// matter only if they concern it (the lock key, the deletion of its
	// predecessor or its own entry), and t takes them from the watch's
	// record as event would have. Asking the server again instead would
	// cost a request whenever a hand-off goes by while a waiter queues,
	// which on a busy hot key is often.
	if w.lockRev > v {
		t.lockFree = w.lockFree
	}
	if t.pred != "" && w.deleted[t.pred] > v {
		t.pred = ""
	}
	if w.deleted[t.ek] > v {
		t.pred = "?"
	}
	if t.lockFree && t.pred == "" || t.pred == "?" {
		t.wake()
	}
	return true
}

// maxDeletes bounds a key watch's memory of deleted entries.
const maxDeletes = 4096

// record remembers ev for the tickets that register later. l.q.mu is held.
func (w *keyWatch) record(ev *clientv3.Event) {
	rev := ev.Kv.ModRevision
	if string(ev.Kv.Key) == w.lk {
		w.lockRev, w.lockFree = rev, ev.Type == mvccpb.DELETE // events come in order
		return
	}
	if ev.Type != mvccpb.DELETE {
		return
	}
	if len(w.deleted) >= maxDeletes {
		w.deleted, w.forgotAt = nil, rev
	}
	if w.deleted == nil {
		w.deleted = map[string]int64{}
	}
	w.deleted[string(ev.Kv.Key)] = rev
}

// unwatch removes t from its watch, which closes after queueLinger without
// tickets.
func (l *Locker) unwatch(t *ticket) {
	q := &l.q
	q.mu.Lock()
	defer q.mu.Unlock()
	w := t.w
	if w == nil {
		return
	}
	t.w = nil
	delete(w.tickets, t)
	if len(w.tickets) == 0 && !w.dead && w.linger == nil {
		w.linger = time.AfterFunc(queueLinger, func() {
			q.mu.Lock()
			defer q.mu.Unlock()
			if len(w.tickets) == 0 && w.linger != nil {
				w.linger = nil
				w.dead = true
				if q.watches[w.lk] == w {
					delete(q.watches, w.lk)
				}
				w.cancel()
			}
		})
	}
}

// run delivers the watch's events to its tickets until it ends.
func (w *keyWatch) run(wch clientv3.WatchChan) {
	q := &w.l.q
	defer q.wg.Done()
	for wr := range wch {
		if wr.Err() != nil || wr.Canceled {
			break
		}
		q.mu.Lock()
		for _, ev := range wr.Events {
			for t := range w.tickets {
				t.event(ev)
			}
			w.record(ev)
		}
		q.mu.Unlock()
	}
	q.mu.Lock()
	w.dead = true
	if q.watches[w.lk] == w {
		delete(q.watches, w.lk)
	}
	if w.linger != nil {
		w.linger.Stop()
		w.linger = nil
	}
	for t := range w.tickets {
		t.broken, t.w = true, nil
		t.wake()
	}
	w.tickets = nil
	q.mu.Unlock()
	w.cancel()
}

// Queue returns a ticket for key's queue of waiters (see [WithQueue]);
// [lock.Acquire] uses it. It makes no request. On a Locker made without
// WithQueue it returns an error matching errors.ErrUnsupported, and Acquire
// waits unqueued.
func (l *Locker) Queue(ctx context.Context, key string) (lock.Ticket, error) {
	if err := l.gate.CheckKey(ctx, "queue", key); err != nil {
		return nil, err
	}
	if !l.cfg.queue {
		return nil, errQueueOff
	}
	lk := l.lockKey(key)
	id := strconv.FormatUint(rand.Uint64(), 36) + strconv.FormatUint(rand.Uint64(), 36)
	return &ticket{l: l, key: key, lk: lk, qp: lk + "\xff", ek: lk + "\xff" + id, ch: make(chan struct{}, 1)}, nil
}

// ticket is one waiter's lock.Ticket.
type ticket struct {
	l               *Locker
	key, lk, qp, ek string
	rev             int64            // the entry's CreateRevision; 0 when not queued
	qid             clientv3.LeaseID // the lease the entry was put with
	closed          bool
	ch              chan struct{} // one slot: a wake-up is kept until Wait takes it

	// Guarded by l.q.mu.
	w        *keyWatch
	v        int64  // the revision of the latest attempt
	pred     string // the entry ahead of this one, "" when none
	lockFree bool
	broken   bool
}

// event applies one watch event to t's view. l.q.mu is held.
func (t *ticket) event(ev *clientv3.Event) {
	if ev.Kv.ModRevision <= t.v {
		return
	}
	switch k := string(ev.Kv.Key); {
	case k == t.lk:
		t.lockFree = ev.Type == mvccpb.DELETE
	case k == t.pred && ev.Type == mvccpb.DELETE:
		t.pred = ""
	case k == t.ek && ev.Type == mvccpb.DELETE:
		t.pred = "?" // the entry expired (its lease was abandoned): queue again
	default:
		return
	}
	if t.lockFree && t.pred == "" {
		t.wake()
	}
}

func (t *ticket) wake() {
	select {
	case t.ch <- struct{}{}:
	default:
	}
}

// TryAcquire is one queued take: one transaction.
func (t *ticket) TryAcquire(ctx context.Context, ttl time.Duration) (lock.Lease, error) {
	l := t.l
	if err := l.gate.CheckTicket(ctx, t.key, ttl, t.closed); err != nil {
		return nil, err
	}
	req, err := l.leaseSeconds(ttl)
	if err != nil {
		return nil, err
	}
	var qid clientv3.LeaseID
	if t.rev <= 0 {
		if qid, err = l.queueLease(ctx); err != nil {
			return nil, errs.OpErrorCtx(ctx, "queue on", t.key, err)
		}
	}
	// joinOnly: the attempt carries no take (and needs no lease) because
	// it could not win (see startTake).
	joinOnly := !l.startTake(t)
	defer l.endTake(t.lk)
	for attempt := 0; ; attempt++ {
		var (
			g    grant
			take []clientv3.Op
		)
		if !joinOnly {
			if g, err = l.pool.get(ctx, ttl, req); err != nil {
				return nil, errs.OpErrorCtx(ctx, "take", t.key, err)
			}
			take = append(take, clientv3.OpPut(t.lk, lockValue(g.ttl, nil), clientv3.WithLease(g.id)))
		}
		var txn clientv3.Txn
		if t.rev <= 0 {
			// Not queued yet: take only if nobody waits; else queue.
			txn = l.kv.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(t.lk), "=", 0),
					clientv3.Compare(clientv3.CreateRevision(t.qp), "=", 0).WithPrefix()).
				Then(take...).
				Else(clientv3.OpGet(t.lk),
					clientv3.OpPut(t.ek, "", clientv3.WithLease(qid)),
					clientv3.OpGet(t.ek), // a transaction's reads see its writes
					clientv3.OpGet(t.qp, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend), clientv3.WithLimit(2)))
		} else {
			txn = l.kv.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(t.lk), "=", 0),
					clientv3.Compare(clientv3.CreateRevision(t.ek), "=", t.rev),
					clientv3.Compare(clientv3.CreateRevision(t.qp), ">", t.rev-1).WithPrefix()).
				Then(append(take, clientv3.OpDelete(t.ek))...).
				Else(clientv3.OpGet(t.lk),
					clientv3.OpGet(t.ek),
					clientv3.OpGet(t.qp, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend), clientv3.WithMaxCreateRev(t.rev-1), clientv3.WithLimit(1)))
		}
		if t.rev <= 0 {
			t.qid = qid
		}
		resp, err := txn.Commit()
		if err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
				if t.rev <= 0 { // perhaps the queue lease: grant another
					l.q.mu.Lock()
					if l.q.id == qid {
						l.q.id = 0
					}
					l.q.mu.Unlock()
					if qid, err = l.queueLease(ctx); err != nil {
						return nil, errs.OpErrorCtx(ctx, "queue on", t.key, err)
					}
				}
				if !joinOnly {
					l.pool.put(g)
				}
				continue
			}
			if !joinOnly {
				l.pool.discard(ctx, g.id)
			}
			if t.rev == 0 {
				t.rev = -1 // unknown: Close deletes the entry in case it exists
			}
			return nil, errs.OpErrorCtx(ctx, "take", t.key, err)
		}
		if resp.Succeeded && joinOnly {
			// The key was free with no waiter ahead after all (the
			// attempt that carried a take failed, or had not been sent
			// yet): try again with a take. Rare, so it need not wait
			// for the other attempt to end.
			joinOnly, attempt = false, -1
			continue
		}
		if resp.Succeeded {
			t.rev = 0 // out of the queue, if it was in it
			return newLease(l, t.key, t.lk, uint64(resp.Header.Revision), g, nil), nil
		}
		if !joinOnly {
			l.pool.put(g)
		}
		return nil, t.refused(resp)
	}
}

// startTake records that an attempt of ticket t starts, and reports
// whether it should carry a take (with a pooled lease): when no other
// attempt of the Locker's tickets on t's key is under way, or when t's
// view says it is the head of the queue with the key free (it was woken).
// The caller calls endTake when the attempt is over.
//
// The others could not win: a first attempt takes the key only when it is
// free with nobody queued, a queued ticket only when nobody is ahead, and
// while another attempt is under way the key is usually held or its
// queue not empty. So they only join the queue, or refresh the ticket's
// view of it, and need no lease; one that finds the key free with nobody
// ahead after all tries again with a take. Without this, many waiters of
// one Locker arriving at once (a hot key's waiters sharing a process's
// client) would each take a pooled lease, drain the pool, grant a lease
// each in line and revoke the surplus afterwards: three requests per
// arrival instead of one, the revocations queued behind one another for
// long after.
func (l *Locker) startTake(t *ticket) bool {
	q := &l.q
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.attempts[t.lk]
	if q.attempts == nil {
		q.attempts = map[string]int{}
	}
	q.attempts[t.lk] = n + 1
	return n == 0 || t.rev > 0 && t.lockFree && t.pred == ""
}

// endTake records that an attempt started with startTake is over.
func (l *Locker) endTake(lk string) {
	q := &l.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.attempts[lk] <= 1 {
		delete(q.attempts, lk)
	} else {
		q.attempts[lk]--
	}
}

// refused reads a refused take's answer into t's view and the error.
func (t *ticket) refused(resp *clientv3.TxnResponse) error {
	held := &lock.NotAcquiredError{Key: t.key, Version: uint64(resp.Header.Revision)}
	free := true
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		free = false
		if s, _ := parseLockValue(kvs[0].Value); s > 0 && s <= int64(maxLeaseTTL/time.Second) {
			held.Remaining = time.Duration(s) * time.Second
		}
	}
	pred := ""
	if t.rev <= 0 { // just queued
		t.rev = resp.Header.Revision
		if kvs := resp.Responses[2].GetResponseRange().GetKvs(); len(kvs) > 0 {
			t.rev = kvs[0].CreateRevision
		}
		if t.rev != resp.Header.Revision {
			pred = "?" // queued by an attempt of unknown outcome: ask again
		} else {
			for _, kv := range resp.Responses[3].GetResponseRange().GetKvs() {
				if string(kv.Key) != t.ek {
					pred = string(kv.Key)
					break
				}
			}
		}
	} else {
		if len(resp.Responses[1].GetResponseRange().GetKvs()) == 0 {
			t.rev = 0 // the entry expired with the queue lease: queue again
			pred = "?"
		} else if kvs := resp.Responses[2].GetResponseRange().GetKvs(); len(kvs) > 0 {
			pred = string(kvs[0].Key)
		}
	}
	if free && pred != "" && held.Remaining == 0 {
		// A waiter ahead is about to take the key, or its process died:
		// its entry goes with the queue lease.
		held.Remaining = (queueLeaseTTL + 1) * time.Second
	}
	t.l.q.mu.Lock()
	t.v, t.pred, t.lockFree = resp.Header.Revision, pred, free
	t.l.q.mu.Unlock()
	return held
}

// Wait blocks until the key is free with no waiter ahead of the ticket, as
// far as the Locker's watch of the key tells, or until ctx ends.
func (t *ticket) Wait(ctx context.Context, _ *lock.NotAcquiredError) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	if t.closed {
		return lock.ErrClosed
	}
	l := t.l
	l.q.mu.Lock()
	v, ready := t.v, t.lockFree && t.pred == "" || t.pred == "?"
	broken, watched := t.broken, t.w != nil
	t.broken = false
	l.q.mu.Unlock()
	if ready || broken || t.rev <= 0 {
		return nil
	}
	if !watched && !l.watchFor(t, v) {
		return nil // events after the attempt may have gone by: try again
	}
	select {
	case <-t.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close leaves the queue (deleting the ticket's entry, one request, when it
// was queued) and its key's watch.
func (t *ticket) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	l := t.l
	l.unwatch(t)
	if t.rev == 0 {
		return nil
	}
	// Queued, or perhaps queued (an attempt of unknown outcome): leaving
	// lets the next waiter go if the key is free (it watches this entry).
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.timeout)
	defer cancel()
	if _, err := l.kv.Delete(ctx, t.ek); err != nil {
		// The entry may stay: let it expire with its lease.
		l.abandonQueueLease(t.qid)
		return errs.OpError("leave the queue of", t.key, err)
	}
	return nil
}
