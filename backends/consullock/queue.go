package consullock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
)

// Queued waiting ([WithQueue]), in the manner of etcd's concurrency.Mutex.
//
// A waiter queues by locking an entry key "<prefix>queue/<key>/<id>" with
// the Locker's queue session (one per Locker, renewed in the background,
// destroyed by Close; behavior delete): the entry's CreateIndex is its
// place. No new entry can ever be created ahead of an existing one, so a
// waiter that once saw no entry ahead of its own is the head for good.
// Queueing is one transaction that locks the entry and reads the queue and
// the lock key.
//
// A ticket's take is one transaction: a check that its entry still exists
// under the queue session, the ordinary take (the lock key locked with a
// pooled session), a mark on the entry that it took (Flags entryTaken, the
// lock's value) and the deletion of the taken entries ahead that its
// Locker knows of (left behind by leases that ended without a release).
// It is sent only when the ticket is the head and the key is free: the
// Locker learns that with one blocking query per key, shared by its
// tickets, on the entry just ahead of its earliest ticket (or, when that
// ticket is the head, on the lock key). A release therefore wakes one
// Locker, whose head takes; the take marks the head's entry, which wakes
// the one Locker whose earliest ticket was behind it, and tells it in the
// same answer that this ticket is the head now and at which index the key
// was taken, so that it goes on to watch the lock key without another
// read. The lease's release deletes the marked entry with the lock key.
// A ticket that leaves (Close) deletes its entry; a waiter that dies loses
// its entry with its Locker's queue session, at most twice the session's
// TTL after its last renewal (Consul invalidates sessions up to twice
// their TTL late). Either way the Locker behind finds the entry gone
// unmarked and reads the queue again.
//
// Per hand-off that is a release, a take and two blocking queries (the new
// head's Locker, woken by the mark, and then by the release), besides the
// queueing of each arriving waiter. Two is the floor: a waiter must learn
// that it is the head when the one ahead takes (it must then follow the
// lock key, whose deletion by session expiry is the only sign of a lease
// lost without a release), and that the key is free when it is released;
// these are two writes, and a blocking query returns, and must be sent
// again, once per write it sees.

// entryTaken marks (in its Flags) a queue entry whose ticket took the key:
// no longer waiting, kept until its lease's release deletes it.
const entryTaken = 1

// minQueueTTL is the shortest TTL of a queue session: it is
// max(minQueueTTL, the agent's session_ttl_min as told by WithMinTTL).
const minQueueTTL = 3 * time.Second

// queueConcurrency bounds the queueing and leaving requests a Locker has in
// flight at once: a process whose many goroutines begin waiting together
// would otherwise open a connection each, and an agent refuses more than
// http_max_conns_per_client (200 by default) from one address.
const queueConcurrency = 4

// queueLinger is how long a Locker keeps a key's watch after its last
// ticket left, so that a waiter coming back soon (a worker looping on a
// hot key) finds its view of the queue still fresh.
const queueLinger = time.Second

// WithQueue makes [lock.Acquire] wait in a first-come-first-served queue
// per key (the Locker implements [lock.Queuer]): only the head of the queue
// attempts a take when the key is released, and each change of the queue
// wakes one blocking query, so a hand-off costs a fixed number of requests
// whatever the number of waiters (see the package doc). The price: a
// Locker that queues keeps one session of its own alive (a renewal every
// third of its TTL while it exists), an Acquire that has to wait locks an
// entry key that its take deletes, and an uncontended Acquire costs one
// request more (the queue is read before the take). TryAcquire never looks
// at the queue.
func WithQueue() Option {
	return func(c *config) error { c.queue = true; return nil }
}

// errQueueOff is Queue's error on a Locker made without WithQueue.
var errQueueOff = fmt.Errorf("consullock: queued waiting is off (see WithQueue): %w", errors.ErrUnsupported)

// queuePrefix is where the entries of key's queue live.
func (l *Locker) queuePrefix(key string) string {
	return l.cfg.prefix + "queue/" + escapeKey(key) + "/"
}

// queue is a Locker's queue session and key watches. Its mutex guards its
// fields, those of its qkeys and the shared fields of their tickets.
type queue struct {
	l   *Locker
	ttl time.Duration // of the queue session

	create sync.Mutex    // serialises session creates
	slots  chan struct{} // queueConcurrency requests in flight

	mu      sync.Mutex
	closed  bool
	sess    string             // the live queue session, "" when none
	stopRen context.CancelFunc // stops the renewal of sess
	ctx     context.Context    // ends at close
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	keys    map[string]*qkey
}

func newQueue(l *Locker) *queue {
	ctx, cancel := context.WithCancel(context.Background())
	return &queue{l: l, ttl: max(l.cfg.minTTL, minQueueTTL), slots: make(chan struct{}, queueConcurrency), ctx: ctx, cancel: cancel, keys: map[string]*qkey{}}
}

// slot waits for one of the Locker's queueConcurrency request slots; the
// caller returns it with release.
func (q *queue) slot(ctx context.Context) error {
	select {
	case q.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (q *queue) release() { <-q.slots }

// session returns the live queue session, creating one if needed.
func (q *queue) session(ctx context.Context) (string, error) {
	q.create.Lock()
	defer q.create.Unlock()
	q.mu.Lock()
	sess, closed := q.sess, q.closed
	q.mu.Unlock()
	if closed {
		return "", errs.Closed("queue on", "")
	}
	if sess != "" {
		return sess, nil
	}
	p := q.l.pool
	s, err := p.createDetached(ctx, q.ttl, q.l.cfg.name+" queue", 0, func(s *session) { p.doom(s.id) })
	if err != nil {
		return "", err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		p.doom(s.id)
		return "", errs.Closed("queue on", "")
	}
	rctx, stop := context.WithCancel(q.ctx)
	q.sess, q.stopRen = s.id, stop
	q.wg.Add(1)
	go q.renew(rctx, s.id)
	return s.id, nil
}

// renew keeps session id alive until ctx ends or Consul no longer knows it.
func (q *queue) renew(ctx context.Context, id string) {
	defer q.wg.Done()
	t := time.NewTicker(q.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, opTimeout)
		ok, err := q.l.pool.renew(rctx, id)
		cancel()
		if err == nil && !ok {
			q.drop(id, false)
			return
		}
	}
}

// drop forgets queue session id (gone, or abandoned when destroy is set):
// the tickets queued with it queue again.
func (q *queue) drop(id string, destroy bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.sess == id && id != "" {
		q.sess = ""
		q.stopRen()
		if destroy {
			q.l.pool.doom(id) // its entries go with it
		}
	}
	for _, k := range q.keys {
		for t := range k.tickets {
			if t.sess == id && t.idx > 0 {
				t.lost = true
				t.wake()
			}
		}
		k.view = nil
		k.kick()
	}
}

// close stops the queue's background work and destroys its session.
func (q *queue) close() {
	q.create.Lock() // no create runs or starts
	q.mu.Lock()
	q.closed = true
	sess := q.sess
	q.sess = ""
	for _, k := range q.keys {
		for t := range k.tickets {
			t.lost = true // its Wait returns, and its TryAcquire finds the Locker closed
			t.wake()
		}
	}
	q.mu.Unlock()
	q.create.Unlock()
	q.cancel()
	q.wg.Wait()
	if sess != "" {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		_ = q.l.pool.destroy(ctx, sess) // best effort: it expires otherwise
		cancel()
	}
}

// qkey is one Locker's watch of one key's queue, shared by its tickets.
type qkey struct {
	q       *queue
	path    string // the lock key
	prefix  string // the queue entries' prefix
	tickets map[*ticket]struct{}
	view    *qview // the latest known state; nil: read it again
	kicked  chan struct{}
	stop    context.CancelFunc // cancels the running blocking query
	running bool
	// notBefore delays waking the head after a refusal for lock-delay.
	notBefore time.Time
}

// qview is a snapshot of a key's queue and lock, never modified.
type qview struct {
	index   uint64
	entries []*api.KVPair // the waiting entries, by CreateIndex
	taken   []string      // the keys of the taken entries
	lock    *api.KVPair   // nil when free
}

// newView builds a view from a transaction's results: the entries under
// prefix and the lock key path.
func newView(index uint64, prefix, path string, kvs []*api.KVPair) *qview {
	v := &qview{index: index}
	for _, kv := range kvs {
		switch {
		case kv.Key == path:
			if kv.Session != "" {
				v.lock = kv
			}
		case strings.HasPrefix(kv.Key, prefix) && kv.Flags == entryTaken:
			if !slices.Contains(v.taken, kv.Key) {
				v.taken = append(v.taken, kv.Key)
			}
		case strings.HasPrefix(kv.Key, prefix) && kv.Session != "":
			if !slices.ContainsFunc(v.entries, func(e *api.KVPair) bool { return e.Key == kv.Key }) {
				v.entries = append(v.entries, kv)
			}
		}
	}
	slices.SortFunc(v.entries, func(a, b *api.KVPair) int { return int(a.CreateIndex) - int(b.CreateIndex) })
	return v
}

// ahead returns the entries of v created before idx.
func (v *qview) ahead(idx uint64) []*api.KVPair {
	n := 0
	for n < len(v.entries) && v.entries[n].CreateIndex < idx {
		n++
	}
	return v.entries[:n]
}

// without returns v with entry key gone and the lock as given.
func (v *qview) without(key string, lk *api.KVPair) *qview {
	w := &qview{index: v.index, lock: lk}
	for _, e := range v.entries {
		if e.Key != key {
			w.entries = append(w.entries, e)
		}
	}
	for _, e := range v.taken {
		if e != key {
			w.taken = append(w.taken, e)
		}
	}
	return w
}

// kick makes the loop look again. q.mu is held.
func (k *qkey) kick() {
	select {
	case k.kicked <- struct{}{}:
	default:
	}
	if k.stop != nil {
		k.stop()
	}
}

// earliest returns the queued ticket with the smallest place. q.mu is held.
func (k *qkey) earliest() *ticket {
	var e *ticket
	for t := range k.tickets {
		if t.idx > 0 && !t.lost && (e == nil || t.idx < e.idx) {
			e = t
		}
	}
	return e
}

// setView installs v unless a newer view is there, and marks the tickets
// whose entries v lacks as lost. q.mu is held.
func (k *qkey) setView(v *qview) {
	if k.view != nil && k.view.index > v.index {
		return
	}
	k.view = v
	for t := range k.tickets {
		if t.idx == 0 || t.lost || t.idx > v.index {
			continue
		}
		if !slices.ContainsFunc(v.entries, func(e *api.KVPair) bool { return e.Key == t.ek && e.CreateIndex == t.idx }) {
			t.lost = true // the entry expired: queue again
			t.wake()
		}
	}
}

// register adds t, queued at t.idx, with the view its queueing read.
// q.mu is held.
func (q *queue) register(t *ticket, v *qview) {
	k := q.keys[t.path]
	if k == nil {
		k = &qkey{q: q, path: t.path, prefix: t.prefix, tickets: map[*ticket]struct{}{}, kicked: make(chan struct{}, 1)}
		q.keys[t.path] = k
	}
	k.tickets[t] = struct{}{}
	t.k = k
	if v != nil {
		k.setView(v)
	}
	if k.earliest() == t {
		k.kick()
	}
	if !k.running && !q.closed {
		k.running = true
		q.wg.Add(1)
		go k.run()
	}
}

// run is the key's loop: it follows the entry ahead of the Locker's
// earliest ticket, or the lock key when that ticket is the head, and wakes
// the head when the key is free.
func (k *qkey) run() {
	q := k.q
	defer q.wg.Done()
	retry := 10 * time.Millisecond
	lingered := false // a linger period without tickets went by
	for {
		select {
		case <-k.kicked:
		default:
		}
		q.mu.Lock()
		if q.ctx.Err() != nil {
			k.running = false
			q.mu.Unlock()
			return
		}
		e := k.earliest()
		if e == nil {
			var (
				fire  <-chan time.Time
				timer *time.Timer
			)
			if len(k.tickets) == 0 {
				if lingered {
					// No ticket for queueLinger: this key's watch ends.
					k.running = false
					if q.keys[k.path] == k {
						delete(q.keys, k.path)
					}
					q.mu.Unlock()
					return
				}
				timer = time.NewTimer(queueLinger)
				fire = timer.C
			}
			q.mu.Unlock()
			select {
			case <-q.ctx.Done():
			case <-k.kicked:
				lingered = false
			case <-fire:
				lingered = true
			}
			if timer != nil {
				timer.Stop()
			}
			continue
		}
		lingered = false
		v, idx := k.view, e.idx // e.idx is written under q.mu (Close)
		ctx, cancel := context.WithCancel(q.ctx)
		k.stop = cancel
		q.mu.Unlock()
		err := k.step(ctx, e, idx, v)
		q.mu.Lock()
		k.stop = nil
		q.mu.Unlock()
		cancel()
		if err == nil || ctx.Err() != nil {
			retry = 10 * time.Millisecond
			continue
		}
		// The agent does not answer: try again later; the tickets wait
		// (bounded by their Remaining) and keep their places.
		t := time.NewTimer(retry)
		select {
		case <-q.ctx.Done():
		case <-t.C:
		}
		t.Stop()
		retry = min(2*retry, time.Second)
	}
}

// step makes one observation for e, the earliest ticket, whose entry's
// CreateIndex was idx when the step began, from view v.
func (k *qkey) step(ctx context.Context, e *ticket, idx uint64, v *qview) error {
	q := k.q
	kv := q.l.client.KV()
	if v == nil || idx > v.index {
		// No view, or one older than e's entry (it queued behind another
		// ticket of this Locker without reading the queue): read it.
		// The read starts after every registered ticket queued, so it
		// sees their entries unless they are gone: it is at least as new
		// as the newest of them (a read transaction reports no index).
		var floor uint64
		q.mu.Lock()
		for t := range k.tickets {
			floor = max(floor, t.idx)
		}
		q.mu.Unlock()
		v, err := k.read(ctx, floor)
		if err != nil {
			return err
		}
		q.mu.Lock()
		k.setView(v)
		q.mu.Unlock()
		return nil
	}
	if ahead := v.ahead(idx); len(ahead) > 0 {
		pred := ahead[len(ahead)-1]
		pair, _, err := kv.Get(pred.Key, (&api.QueryOptions{WaitIndex: pred.ModifyIndex}).WithContext(ctx))
		if err != nil {
			return err
		}
		same := pair != nil && pair.CreateIndex == pred.CreateIndex && pair.Session != ""
		if same && pair.Flags != entryTaken {
			return nil // still waiting: wait again
		}
		var lk *api.KVPair // the lock pred took; nil: read the whole queue
		taken := v.taken
		if same {
			// It took the key, in the transaction that marked its entry:
			// it was the head, so e is the head now, and the key was
			// locked at the mark's index (with the value the mark
			// carries), unless it changed since, which the lock key's
			// blocking query from that index then tells at once.
			lk = &api.KVPair{Key: k.path, ModifyIndex: pair.ModifyIndex, Value: pair.Value, Flags: pred.CreateIndex}
			taken = append(slices.Clone(taken), pred.Key)
		} else {
			// It left. If it took the key (its take marks the lock key's
			// Flags with its place; its release deleted the mark before
			// this query saw it), it was the head, so e is the head now;
			// otherwise (it gave up or expired) the entries before it may
			// still wait: read the whole queue.
			got, _, err := kv.Get(k.path, (&api.QueryOptions{}).WithContext(ctx))
			if err == nil && got != nil && got.Session != "" && got.Flags == pred.CreateIndex {
				lk = got
			}
		}
		var next *qview
		if lk != nil {
			// Its entries are those of v after pred (as complete as v is).
			next = &qview{index: v.index, lock: lk, taken: taken}
			for _, x := range v.entries {
				if x.CreateIndex > pred.CreateIndex {
					next.entries = append(next.entries, x)
				}
			}
		}
		q.mu.Lock()
		if k.view == v {
			k.view = next
		}
		q.mu.Unlock()
		return nil
	}
	if v.lock == nil {
		// The head with the key free: wake it, and wait for news (its
		// take, its leaving, a refusal). After a refusal for lock-delay
		// (the key free but not yet lockable; its end sends no event),
		// not before the pause it asked for.
		q.mu.Lock()
		pause := time.Until(k.notBefore)
		q.mu.Unlock()
		if pause > 0 {
			t := time.NewTimer(pause)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
		q.mu.Lock()
		if k.view == v && !e.ready {
			e.ready = true
			e.wake()
		}
		q.mu.Unlock()
		<-ctx.Done()
		return nil
	}
	pair, _, err := kv.Get(k.path, (&api.QueryOptions{WaitIndex: v.lock.ModifyIndex}).WithContext(ctx))
	if err != nil {
		return err
	}
	if pair == nil || pair.Session == "" || pair.ModifyIndex != v.lock.ModifyIndex {
		if pair != nil && pair.Session == "" {
			pair = nil
		}
		q.mu.Lock()
		if k.view == v {
			k.view = v.without("", pair)
		}
		q.mu.Unlock()
	}
	return nil
}

// read reads the key's queue and lock in one transaction.
func (k *qkey) read(ctx context.Context, floor uint64) (*qview, error) {
	ok, resp, _, err := k.q.l.client.Txn().Txn(api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: k.prefix}},
		{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: k.path}},
	}, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, apiError(err)
	}
	if !ok || resp == nil {
		return nil, errors.New("queue read refused")
	}
	var kvs []*api.KVPair
	for _, r := range resp.Results {
		if r.KV != nil {
			kvs = append(kvs, r.KV)
			floor = max(floor, r.KV.ModifyIndex)
		}
	}
	return newView(floor, k.prefix, k.path, kvs), nil
}

// Queue returns a ticket for key's queue of waiters (see [WithQueue]);
// [lock.Acquire] uses it. It makes no request. On a Locker made without
// WithQueue it returns an error matching errors.ErrUnsupported, and Acquire
// waits unqueued.
func (l *Locker) Queue(ctx context.Context, key string) (lock.Ticket, error) {
	if err := l.gate.CheckKey(ctx, "queue", key); err != nil {
		return nil, err
	}
	if l.q == nil {
		return nil, errQueueOff
	}
	prefix := l.queuePrefix(key)
	return &ticket{l: l, key: key, path: l.lockPath(key), prefix: prefix, ek: prefix + newEntryID(), ch: make(chan struct{}, 1)}, nil
}

// newEntryID returns a random name for a queue entry.
func newEntryID() string {
	var id [12]byte
	_, _ = rand.Read(id[:])
	return hex.EncodeToString(id[:])
}

// ticket is one waiter's lock.Ticket.
type ticket struct {
	l                     *Locker
	key, path, prefix, ek string
	closed                bool
	maybe                 bool // a queueing or take of unknown outcome ran: Close deletes the entry
	// gone are the entries takes of unknown outcome left: perhaps marked
	// taken for a lease nobody holds (its session is doomed), perhaps
	// still waiting. The ticket queues again under a new name, since
	// locking such an entry again would unmark it and give it back a place
	// the Locker behind may already have passed; the next queueing (or
	// Close) deletes them.
	gone []string
	ch   chan struct{} // one slot: a wake-up is kept until Wait takes it

	// Guarded by l.q.mu.
	k     *qkey
	idx   uint64 // the entry's CreateIndex; 0 when not queued
	sess  string // the queue session the entry is locked with
	lost  bool   // the entry is gone: queue again
	ready bool   // the head, with the key free when last seen
}

func (t *ticket) wake() {
	select {
	case t.ch <- struct{}{}:
	default:
	}
}

// TryAcquire is one queued take. A ticket not in the queue queues first
// (one transaction) and takes at once if it is the head and the key is
// free; a queued ticket takes (one transaction) only when its Locker saw
// it at the head with the key free, and is otherwise refused without a
// request.
func (t *ticket) TryAcquire(ctx context.Context, ttl time.Duration) (lock.Lease, error) {
	l := t.l
	if err := l.gate.CheckTicket(ctx, t.key, ttl, t.closed); err != nil {
		return nil, err
	}
	sttl, err := l.sessionTTL(ttl)
	if err != nil {
		return nil, err
	}
	q := l.q
	for attempt := 0; ; attempt++ {
		q.mu.Lock()
		queued, ready := t.idx > 0 && !t.lost, t.ready
		q.mu.Unlock()
		if !queued {
			if attempt > 2 {
				return nil, errs.OpError("queue on", t.key, errors.New("the queue session keeps vanishing"))
			}
			if err := t.enqueue(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if !ready {
			return nil, t.refusal()
		}
		le, again, err := t.take(ctx, sttl)
		if again && attempt < 3 {
			continue
		}
		return le, err
	}
}

// enqueue puts the ticket in the queue (or keeps its place, when its entry
// still exists) and reads the queue and the lock key: one transaction.
func (t *ticket) enqueue(ctx context.Context) error {
	l, q := t.l, t.l.q
	for attempt := 0; ; attempt++ {
		sess, err := q.session(ctx)
		if err != nil {
			return errs.OpError("queue on", t.key, err)
		}
		q.mu.Lock()
		if t.sess != "" && t.sess != sess {
			// The entry went (or goes) with the old session, and another
			// session cannot lock it: queue under a new name.
			t.ek = t.prefix + newEntryID()
		}
		t.sess = sess // Close abandons it if the outcome is unknown
		q.mu.Unlock()
		if err := q.slot(ctx); err != nil {
			return errs.OpErrorCtx(ctx, "queue on", t.key, err)
		}
		// The queue is read only when no other ticket of this Locker waits
		// ahead (then this one cannot be the head, and its Locker watches
		// for the earlier one): with many waiters it is a long answer.
		q.mu.Lock()
		behind := q.keys[t.path] != nil && q.keys[t.path].earliest() != nil
		q.mu.Unlock()
		ops := api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVLock, Key: t.ek, Session: sess}},
			{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: t.path}},
		}
		if !behind {
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: t.prefix}})
		}
		gone := t.gone
		for _, e := range gone {
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: e}})
		}
		ok, resp, err := l.txn(ctx, ops)
		q.release()
		if err != nil {
			t.maybe = true // the entry may exist: Close deletes it
			return errs.OpError("queue on", t.key, err)
		}
		if !ok {
			f := failure(resp.Errors)
			switch {
			case f.denied():
				return denied("queue on", t.key, f.what)
			case f.invalidSession() && attempt == 0:
				q.drop(sess, false)
				continue
			}
			return errs.OpError("queue on", t.key, f.refused())
		}
		t.maybe = true
		own := resp.Results[0].KV
		var kvs []*api.KVPair
		for _, r := range resp.Results[1:] {
			if r.KV != nil && !slices.Contains(gone, r.KV.Key) { // read before their deletion
				kvs = append(kvs, r.KV)
			}
		}
		t.gone = nil
		v := newView(own.ModifyIndex, t.prefix, t.path, kvs)
		q.mu.Lock()
		defer q.mu.Unlock()
		t.idx, t.sess, t.lost, t.ready = own.CreateIndex, sess, false, false
		if behind {
			v = nil // it did not read the queue
		} else if len(v.ahead(t.idx)) == 0 && v.lock == nil {
			t.ready = true
		}
		q.register(t, v)
		return nil
	}
}

// take is the ticket's take transaction. again reports that the ticket
// must queue again (its entry is gone) or retry with a new session.
func (t *ticket) take(ctx context.Context, sttl time.Duration) (_ lock.Lease, again bool, _ error) {
	l, q := t.l, t.l.q
	s, renewed, err := l.pool.get(ctx, sttl)
	if err != nil {
		return nil, false, err
	}
	q.mu.Lock()
	sess, idx := t.sess, t.idx
	var stale []string // taken entries ahead: if the take succeeds, their leases ended
	if t.k != nil && t.k.view != nil {
		stale = slices.Clone(t.k.view.taken)
	}
	q.mu.Unlock()
	val := lockValue(sttl, nil)
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: t.ek, Session: sess}},
		{KV: &api.KVTxnOp{Verb: api.KVLock, Key: t.path, Session: s.id, Value: val, Flags: idx}},
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: t.ek, Flags: entryTaken, Value: val}}, // keeps its session
	}
	for _, e := range stale {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: e}})
	}
	ok, resp, err := l.txn(ctx, ops)
	if err != nil {
		// The take may have happened: the session must never be reused
		// (destroying it frees the key), and the entry may be gone.
		l.pool.doom(s.id)
		t.maybe = true
		q.mu.Lock()
		t.lost, t.ready = true, false
		t.gone = append(t.gone, t.ek)
		t.ek = t.prefix + newEntryID()
		q.mu.Unlock()
		return nil, false, errs.OpError("take", t.key, err)
	}
	if ok {
		var kv *api.KVPair
		for _, r := range resp.Results {
			if r.KV != nil && r.KV.Key == t.path {
				kv = r.KV
			}
		}
		if kv == nil {
			l.pool.doom(s.id)
			return nil, false, errs.OpError("take", t.key, errors.New("transaction committed without the lock key"))
		}
		t.maybe = false
		if kv.Session == "" {
			held := *kv
			held.Session = s.id
			kv = &held
		}
		le := &lease{l: l, path: t.path, index: kv.ModifyIndex, sess: s, entry: t.ek}
		le.Init(&l.gate, t.key, kv.ModifyIndex, renewed, sttl)
		q.mu.Lock()
		if k := t.k; k != nil {
			if k.view != nil {
				k.view = k.view.without(t.ek, kv) // t.ek is its lease's now
				k.view.taken = slices.DeleteFunc(k.view.taken, func(e string) bool { return slices.Contains(stale, e) })
			}
			k.kick()
		}
		t.idx, t.ready = 0, false
		// The entry is the lease's now (its end deletes it): a ticket used
		// again queues under a new name.
		t.ek = t.prefix + newEntryID()
		q.mu.Unlock()
		return le, false, nil
	}
	f := failure(resp.Errors)
	switch {
	case f.denied():
		l.pool.putBack(s)
		return nil, false, denied("take", t.key, f.what)
	case f.op == 0:
		// The entry is gone (its session expired): queue again.
		l.pool.putBack(s)
		q.mu.Lock()
		t.lost, t.ready = true, false
		q.mu.Unlock()
		return nil, true, nil
	case f.held():
		l.pool.putBack(s)
		_, herr := l.heldError(ctx, t.key, t.path, f.delayed())
		q.mu.Lock()
		t.ready = false
		if k := t.k; k != nil {
			k.view = nil // look again: someone took the key outside the queue
			if f.delayed() {
				k.notBefore = time.Now().Add(lock.DefaultMaxBackoff)
			}
			k.kick()
		}
		q.mu.Unlock()
		return nil, false, herr
	case f.invalidSession():
		l.pool.purge(sttl)
		return nil, true, nil
	}
	l.pool.putBack(s)
	return nil, false, errs.OpError("take", t.key, f.refused())
}

// refusal is a queued ticket's answer while it is not at the head with
// the key free: the holder's TTL bounds the wait, or, when the key is free,
// the time until the entries ahead expire unless they take it.
func (t *ticket) refusal() error {
	held := &lock.NotAcquiredError{Key: t.key, Remaining: 2*t.l.q.ttl + time.Second}
	q := t.l.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if t.k == nil || t.k.view == nil || t.k.view.lock == nil {
		return held
	}
	lk := t.k.view.lock
	held.Version = lk.ModifyIndex
	held.Remaining = lock.DefaultMaxBackoff
	if d, _ := parseLockValue(lk.Value); d > 0 && d <= MaxTTL {
		held.Remaining = d
	}
	return held
}

// Wait blocks until the Locker saw the ticket at the head of the queue with
// the key free, or the ticket must queue again, or ctx ends.
func (t *ticket) Wait(ctx context.Context, _ *lock.NotAcquiredError) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	if t.closed {
		return lock.ErrClosed
	}
	q := t.l.q
	q.mu.Lock()
	now := t.idx == 0 || t.lost || t.ready
	q.mu.Unlock()
	if now {
		select { // a wake-up for the same news
		case <-t.ch:
		default:
		}
		return nil
	}
	select {
	case <-t.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close leaves the queue: it deletes the ticket's entry (one request, when
// it was queued), which wakes the Locker whose earliest waiter is behind
// it. If the request fails, the Locker abandons its queue session, whose
// entries then expire, so that a leftover entry never blocks the queue;
// its other waiters queue again.
func (t *ticket) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	q := t.l.q
	q.mu.Lock()
	queued, sess := t.idx > 0 && !t.lost, t.sess
	if k := t.k; k != nil {
		first := k.earliest() == t
		delete(k.tickets, t)
		if k.view != nil {
			k.view = k.view.without(t.ek, k.view.lock)
		}
		t.k = nil
		if first {
			k.kick()
		}
	}
	t.idx, t.ready = 0, false
	q.mu.Unlock()
	if !queued && !t.maybe {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	err := q.slot(ctx)
	if err == nil {
		for _, e := range append([]string{t.ek}, t.gone...) {
			if _, err = t.l.client.KV().Delete(e, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
				break
			}
		}
		q.release()
	}
	if err != nil {
		q.drop(sess, true)
		return errs.OpError("leave the queue of", t.key, apiError(err))
	}
	t.maybe, t.gone = false, nil
	return nil
}
