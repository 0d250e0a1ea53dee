package etcdlock

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// grant is an etcd lease as this process knows it.
type grant struct {
	id   clientv3.LeaseID
	req  int64     // TTL asked for, in seconds: the pool class
	ttl  int64     // TTL etcd granted, in seconds (at least req)
	base time.Time // when the grant or latest renewal was sent
}

// expiry is the earliest time etcd may expire the lease: the TTL counts from
// when etcd handled the request, which is after base.
func (g grant) expiry() time.Time { return g.base.Add(time.Duration(g.ttl) * time.Second) }

// renewMargin is the least remaining life worth renewing a pooled lease for;
// a lease closer to its expiry is dropped and left to expire.
const renewMargin = 500 * time.Millisecond

// refillQuarter: a take that hands out a pooled lease in the last
// 1/refillQuarter of its usable time (while it lives at least the TTL asked
// for) has the pool renew or grant another in the background, if none is
// left usable.
const refillQuarter = 4

// pool keeps etcd leases granted ahead of need, bound to no key, so that a
// take needs one request (its transaction) instead of two. Leases come back
// after a release; a lease is handed out only while it will live at least the
// TTL asked for, so a lock lasts between its TTL and the lease's granted TTL.
// A background worker, running only while it has work, makes a lease ready
// ahead of the next take (renewing a stale one or granting one; see get) and
// revokes surplus or doubtful leases. Close revokes what is left.
type pool struct {
	leases  clientv3.Lease
	size    int           // idle leases kept per class; 0: no pooling
	timeout time.Duration // per background request, and for close

	mu      sync.Mutex
	idle    map[int64][]grant // by class
	filling map[int64]bool    // a refill of the class is queued or running
	queue   []task
	running bool // the worker goroutine is alive
	closed  bool
	ctx     context.Context // the worker's; cancelled at the end of close
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// task is one piece of background work: refill a class or revoke a lease.
type task struct {
	refill int64
	revoke clientv3.LeaseID
}

func newPool(leases clientv3.Lease, size int, timeout time.Duration) *pool {
	ctx, cancel := context.WithCancel(context.Background())
	return &pool{
		leases:  leases,
		size:    size,
		timeout: timeout,
		idle:    make(map[int64][]grant),
		filling: make(map[int64]bool),
		ctx:     ctx,
		cancel:  cancel,
	}
}

// get returns a lease of class req that lives at least ttl from now: a
// pooled one when there is one, otherwise a stale pooled one renewed, or a
// new grant.
func (p *pool) get(ctx context.Context, ttl time.Duration, req int64) (grant, error) {
	now := time.Now()
	p.mu.Lock()
	list := p.idle[req]
	best, stale := -1, -1
	n := 0
	for _, g := range list {
		left := g.expiry().Sub(now)
		if left <= renewMargin {
			continue // about to expire: drop it
		}
		list[n] = g
		switch {
		case left >= ttl:
			if best < 0 || g.expiry().Before(list[best].expiry()) {
				best = n // the usable lease that goes stale first
			}
		case stale < 0 || g.expiry().After(list[stale].expiry()):
			stale = n
		}
		n++
	}
	clear(list[n:])
	list = list[:n]
	var g grant
	found := best >= 0
	// refill: whether the worker makes another lease ready, once no
	// usable one is left idle. Only when there was none idle to hand out
	// (a cold pool, or more takes at once than leases), or when the one
	// handed out is in the last quarter of its usable time (the
	// Locker's next take will likely find it stale). Not after renewing
	// a stale lease in line: that lease comes back usable for the whole
	// slack, and one renewed beside it would go stale at the same time,
	// so that a Locker taking one lock at a time would renew two leases
	// per slack, one of them in line each time.
	refill := false
	switch {
	case found:
		g = list[best]
		list = append(list[:best], list[best+1:]...)
		usable := time.Duration(g.ttl)*time.Second - ttl // the slack, at least
		refill = g.expiry().Sub(now)-ttl < usable/refillQuarter
	case stale >= 0:
		g = list[stale]
		list = append(list[:stale], list[stale+1:]...)
	default:
		refill = true
	}
	p.idle[req] = list
	if refill && p.size > 0 && !p.closed && !p.filling[req] && !p.anyUsable(list, now, ttl) {
		p.filling[req] = true
		p.enqueue(task{refill: req})
	}
	p.mu.Unlock()
	if found {
		return g, nil
	}
	if g.id != 0 {
		if r, err := p.renew(ctx, g); err == nil || !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return r, err
		}
	}
	return p.grant(ctx, req)
}

func (p *pool) anyUsable(list []grant, now time.Time, ttl time.Duration) bool {
	for _, g := range list {
		if g.expiry().Sub(now) >= ttl {
			return true
		}
	}
	return false
}

// grant asks etcd for a new lease of req seconds.
func (p *pool) grant(ctx context.Context, req int64) (grant, error) {
	sent := time.Now()
	resp, err := p.leases.Grant(ctx, req)
	if err != nil {
		return grant{}, err
	}
	return grant{id: resp.ID, req: req, ttl: resp.TTL, base: sent}, nil
}

// renew renews g to its full TTL.
func (p *pool) renew(ctx context.Context, g grant) (grant, error) {
	sent := time.Now()
	resp, err := p.leases.KeepAliveOnce(ctx, g.id)
	if err != nil {
		return grant{}, err
	}
	g.base, g.ttl = sent, resp.TTL
	return g, nil
}

// put returns a lease that is bound to no key.
func (p *pool) put(g grant) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		// Close already revoked the pool; this lease expires on its own.
	case !g.expiry().After(time.Now().Add(renewMargin)):
		// About to expire anyway.
	case len(p.idle[g.req]) >= p.size:
		p.enqueue(task{revoke: g.id})
	default:
		p.idle[g.req] = append(p.idle[g.req], g)
	}
}

// discard revokes a lease that may be bound to a key nobody holds a Lease
// for (a take whose outcome is unknown): revoking it deletes that key.
func (p *pool) discard(ctx context.Context, id clientv3.LeaseID) {
	p.mu.Lock()
	if !p.closed {
		p.enqueue(task{revoke: id})
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.timeout)
	defer cancel()
	_, _ = p.leases.Revoke(rctx, id)
}

// enqueue adds a task and starts the worker if it is not running. p.mu is
// held.
func (p *pool) enqueue(t task) {
	p.queue = append(p.queue, t)
	if !p.running {
		p.running = true
		p.wg.Add(1)
		go p.work()
	}
}

// work runs queued tasks until there are none left, then returns.
func (p *pool) work() {
	defer p.wg.Done()
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		t := p.queue[0]
		p.queue[0] = task{}
		p.queue = p.queue[1:]
		closed := p.closed
		p.mu.Unlock()
		ctx, cancel := context.WithTimeout(p.ctx, p.timeout)
		switch {
		case t.revoke != 0:
			_, _ = p.leases.Revoke(ctx, t.revoke)
		case closed:
			p.mu.Lock()
			p.filling[t.refill] = false
			p.mu.Unlock()
		default:
			p.refill(ctx, t.refill)
		}
		cancel()
	}
}

// refill makes one more lease of class req ready: it renews the idle lease
// closest to going stale, or grants a new one.
func (p *pool) refill(ctx context.Context, req int64) {
	now := time.Now()
	p.mu.Lock()
	list := p.idle[req]
	pick := -1
	for i, g := range list {
		if g.expiry().Sub(now) > renewMargin && (pick < 0 || g.expiry().Before(list[pick].expiry())) {
			pick = i
		}
	}
	var g grant
	if pick >= 0 {
		g = list[pick]
		p.idle[req] = append(list[:pick], list[pick+1:]...)
	}
	p.mu.Unlock()

	var err error
	if g.id != 0 {
		if g, err = p.renew(ctx, g); errors.Is(err, rpctypes.ErrLeaseNotFound) {
			g, err = p.grant(ctx, req)
		}
	} else {
		g, err = p.grant(ctx, req)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	p.filling[req] = false
	if err != nil {
		return // the next take grants in line and asks again
	}
	if len(p.idle[req]) >= p.size {
		p.queue = append(p.queue, task{revoke: g.id}) // the worker is running
		return
	}
	// Added even when closed: close revokes the idle leases after the
	// worker stopped.
	p.idle[req] = append(p.idle[req], g)
}

// close stops background work, waits for it, and revokes the idle leases,
// all within the pool's timeout. Revoking is best effort: a lease it could
// not revoke (etcd unreachable or slow) expires on its own within its TTL.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	timer := time.AfterFunc(p.timeout, p.cancel)
	defer func() {
		timer.Stop()
		p.cancel()
	}()
	p.wg.Wait() // the worker finishes its revokes; refills are skipped
	p.mu.Lock()
	var ids []clientv3.LeaseID
	for _, list := range p.idle {
		for _, g := range list {
			ids = append(ids, g.id)
		}
	}
	p.idle = map[int64][]grant{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() { _, _ = p.leases.Revoke(p.ctx, id) })
	}
	wg.Wait()
}
