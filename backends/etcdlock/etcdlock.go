package etcdlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/idempotency"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults of the options.
const (
	// DefaultPrefix is the etcd key prefix every key of a Locker lives under.
	DefaultPrefix = "idemlock/"
	// DefaultLeasePool is how many unused leases a Locker keeps per TTL class.
	DefaultLeasePool = 8
	// DefaultTTLSlack is how much longer than asked a lock may last, so
	// that a lease granted ahead of need can serve a take (see [WithTTLSlack]).
	DefaultTTLSlack = time.Second
	// DefaultTimeout bounds the Locker's own background requests (granting
	// and revoking pooled leases) and Close.
	DefaultTimeout = 5 * time.Second
	// DefaultMaxRecordSize is the largest record Complete stores: etcd
	// refuses requests above 1.5 MiB unless started with a larger
	// --max-request-bytes.
	DefaultMaxRecordSize = 1 << 20
)

// maxLeaseTTL is etcd's largest lease TTL (etcdserver's MaxLeaseTTL).
const maxLeaseTTL = 9_000_000_000 * time.Second

// maxTTLSlack bounds WithTTLSlack so that TTL arithmetic never overflows.
const maxTTLSlack = time.Hour

var (
	// ErrClosed is returned by a Locker's methods that start new work after
	// Close. Leases taken before Close can still be refreshed and released.
	ErrClosed = errors.New("etcdlock: Locker is closed")
	// ErrRecordTooLarge is returned by Complete for a record above the
	// Locker's limit (see [WithMaxRecordSize]); it also matches
	// lock.ErrInvalidArgument. The lease is left as it was.
	ErrRecordTooLarge = fmt.Errorf("etcdlock: %w", idempotency.ErrRecordTooLarge)
)

// Option configures a Locker made by [New].
type Option func(*config)

type config struct {
	prefix        string
	poolSize      int
	slack         time.Duration
	timeout       time.Duration
	maxRecord     int
	bucket        time.Duration // 0: derived from each retention
	err           error
	clientCloseFn func() error // set by the URL opener only: the owned client's Close
	queue         bool         // WithQueue
}

func (c *config) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// WithPrefix sets the etcd key prefix under which the Locker keeps its keys
// (default [DefaultPrefix]). Lockers that must exclude each other use the
// same prefix. Any string is valid, the empty one included; Lockers with
// different prefixes share no lock unless one prefix extends the other
// (prefix "a/" keeps lock "l/x" where prefix "a/l/" keeps lock "x").
func WithPrefix(prefix string) Option {
	return func(c *config) { c.prefix = prefix }
}

// WithLeasePool sets how many unused etcd leases the Locker keeps ready per
// TTL class (default [DefaultLeasePool]), so that a take needs no lease grant
// on its critical path. Zero turns the pool off: every take then grants a
// lease first (one more round trip) and every release revokes it in the
// background.
func WithLeasePool(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.fail(fmt.Errorf("%w: etcdlock: lease pool size %d is negative", lock.ErrInvalidArgument, n))
			return
		}
		c.poolSize = n
	}
}

// WithTTLSlack sets how much longer than its TTL (rounded up to whole
// seconds) a lock may last, between 0 and an hour (default
// [DefaultTTLSlack]). A lock always lasts at least its TTL; the slack lets a
// lease granted up to that long before a take serve it, which is what makes
// a warm take one round trip. A pooled lease older than the slack is renewed
// before use (one more request in line), so a Locker that takes locks less
// often than once per slack pays two requests per take: raise the slack if
// latency matters more than TTL precision. With zero slack, TTLs of whole
// seconds never find a pooled lease fresh enough.
func WithTTLSlack(d time.Duration) Option {
	return func(c *config) {
		if d < 0 || d > maxTTLSlack {
			c.fail(fmt.Errorf("%w: etcdlock: TTL slack %v outside [0, %v]", lock.ErrInvalidArgument, d, maxTTLSlack))
			return
		}
		c.slack = d
	}
}

// WithTimeout bounds the Locker's background requests (granting, renewing
// and revoking pooled leases) and Close (default [DefaultTimeout]).
func WithTimeout(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.fail(fmt.Errorf("%w: etcdlock: timeout %v is not positive", lock.ErrInvalidArgument, d))
			return
		}
		c.timeout = d
	}
}

// WithMaxRecordSize sets the largest record Complete accepts, in bytes
// (default [DefaultMaxRecordSize]). Raise it only together with etcd's
// --max-request-bytes (1.5 MiB by default).
func WithMaxRecordSize(n int) Option {
	return func(c *config) {
		if n <= 0 {
			c.fail(fmt.Errorf("%w: etcdlock: max record size %d is not positive", lock.ErrInvalidArgument, n))
			return
		}
		c.maxRecord = n
	}
}

// WithRetentionBucket sets how long one retention lease keeps accepting new
// idempotency records (default: a sixteenth of the retention, between one
// second and an hour). Records share retention leases by bucket, so Complete
// needs no lease grant of its own when warm, and a record expires between
// its retention and its retention plus the bucket after it was stored.
func WithRetentionBucket(d time.Duration) Option {
	return func(c *config) {
		if d < time.Second || d > 24*time.Hour {
			c.fail(fmt.Errorf("%w: etcdlock: retention bucket %v outside [1s, 24h]", lock.ErrInvalidArgument, d))
			return
		}
		c.bucket = d
	}
}

// Locker takes locks on an etcd cluster. It is safe for concurrent use. Its
// methods return [ErrClosed] after Close, except the methods of leases
// taken before, which keep working as long as the client is open.
type Locker struct {
	client  *clientv3.Client
	kv      clientv3.KV
	leases  clientv3.Lease
	watcher clientv3.Watcher // owned: one watch stream for all subscriptions
	cfg     config
	pool    *pool
	ret     retention

	q queueState // WithQueue's lease and watches

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// New returns a Locker that keeps its locks on the etcd cluster client talks
// to. The Locker never closes client; close the Locker (which frees its
// pooled leases and its watch stream) before the client.
//
// Invalid arguments (a nil client, an out-of-range option) do not panic: the
// Locker then returns an error matching lock.ErrInvalidArgument from every
// method.
func New(client *clientv3.Client, opts ...Option) *Locker {
	cfg := config{
		prefix:    DefaultPrefix,
		poolSize:  DefaultLeasePool,
		slack:     DefaultTTLSlack,
		timeout:   DefaultTimeout,
		maxRecord: DefaultMaxRecordSize,
	}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if client == nil {
		cfg.fail(fmt.Errorf("%w: etcdlock: nil client", lock.ErrInvalidArgument))
	}
	l := &Locker{client: client, cfg: cfg}
	if cfg.err != nil {
		return l
	}
	l.kv = client.KV
	l.leases = client.Lease
	l.watcher = clientv3.NewWatcher(client)
	l.pool = newPool(l.leases, cfg.poolSize, cfg.timeout)
	l.ret.cur = make(map[int64]grant)
	return l
}

// Close frees what the Locker owns: it stops its background work, revokes
// the leases it pooled (best effort, within [WithTimeout]: a lease it cannot
// revoke expires on its own) and ends its watch stream (subscriptions then
// wake and report [ErrClosed]). Leases that are held stay held until released or
// expired. Close never closes a client passed to New; a Locker made by
// lock.Open closes its client too. Safe to call more than once.
func (l *Locker) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		var errs []error
		if l.pool != nil {
			l.pool.close()
		}
		if l.leases != nil {
			l.closeQueue()
		}
		if l.watcher != nil {
			errs = append(errs, l.watcher.Close())
		}
		if l.cfg.clientCloseFn != nil {
			errs = append(errs, l.cfg.clientCloseFn())
		}
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}

// usable reports the error that keeps the Locker from starting new work.
func (l *Locker) usable() error {
	if l.cfg.err != nil {
		return l.cfg.err
	}
	if l.closed.Load() {
		return ErrClosed
	}
	return nil
}

func (l *Locker) lockKey(key string) string   { return l.cfg.prefix + "l/" + key }
func (l *Locker) recordKey(key string) string { return l.cfg.prefix + "r/" + key }

// leaseSeconds returns the lease TTL, in whole seconds, to ask for a lock of
// ttl: ttl plus the slack, rounded up.
func (l *Locker) leaseSeconds(ttl time.Duration) (int64, error) {
	if err := lock.ValidateTTL(ttl); err != nil {
		return 0, err
	}
	if ttl > maxLeaseTTL-l.cfg.slack {
		return 0, &lock.TTLError{TTL: ttl, Reason: fmt.Sprintf("longer than etcd's maximum lease TTL %v less the slack %v", maxLeaseTTL, l.cfg.slack)}
	}
	return ceilSeconds(ttl + l.cfg.slack), nil
}

func ceilSeconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if d%time.Second != 0 {
		s++
	}
	return max(s, 1)
}

// TryAcquire makes one attempt to take key for ttl: one etcd transaction
// that puts the lock key bound to a lease if no holder's key exists, and
// otherwise reads the holder's. A lease with a TTL of ttl rounded up to
// whole seconds (plus up to the slack) comes from the Locker's pool, so the
// transaction is the only request when the pool is warm.
//
// A held key returns a *lock.NotAcquiredError whose Version is the etcd
// revision the attempt saw (Subscription.Wait watches from the next one)
// and whose Remaining is an upper bound: the TTL of the holder's lease.
func (l *Locker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if err := lock.CheckArgs(ctx, key, ttl); err != nil {
		return nil, err
	}
	if err := l.usable(); err != nil {
		return nil, err
	}
	le, _, _, err := l.take(ctx, key, ttl, false, nil)
	if err != nil {
		return nil, err
	}
	return le, nil
}

// take is TryAcquire and, when claim is set, Claim: one transaction that
// puts the lock key if it is absent (and, for a claim, no record exists).
// A non-nil fp is kept in the lock key's value; a refused take returns the
// holder's as its third result.
func (l *Locker) take(ctx context.Context, key string, ttl time.Duration, claim bool, fp []byte) (*lease, []byte, []byte, error) {
	req, err := l.leaseSeconds(ttl)
	if err != nil {
		return nil, nil, nil, err
	}
	lk, rk := l.lockKey(key), l.recordKey(key)
	for attempt := 0; ; attempt++ {
		g, err := l.pool.get(ctx, ttl, req)
		if err != nil {
			return nil, nil, nil, l.opError("take", key, ctx, err)
		}
		conds := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(lk), "=", 0)}
		orElse := []clientv3.Op{clientv3.OpGet(lk)}
		if claim {
			conds = append(conds, clientv3.Compare(clientv3.CreateRevision(rk), "=", 0))
			orElse = append(orElse, clientv3.OpGet(rk))
		}
		resp, err := l.kv.Txn(ctx).
			If(conds...).
			Then(clientv3.OpPut(lk, lockValue(g.ttl, fp), clientv3.WithLease(g.id))).
			Else(orElse...).
			Commit()
		if err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0 {
				// The pooled lease died (revoked behind our back, or the
				// local clock ran slow); the transaction was refused
				// whole. Try once more with a fresh lease.
				continue
			}
			// The outcome is unknown: the key may now be bound to g.
			// Revoking g frees it if so, and nobody else uses g.
			l.pool.discard(ctx, g.id)
			return nil, nil, nil, l.opError("take", key, ctx, err)
		}
		if resp.Succeeded {
			le := &lease{l: l, key: key, lk: lk, token: uint64(resp.Header.Revision), g: g, fp: fp}
			return le, nil, nil, nil
		}
		l.pool.put(g)
		if claim {
			if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
				_, rec, err := decodeRecord(kvs[0].Value)
				if err != nil {
					return nil, nil, nil, fmt.Errorf("etcdlock: claim %q: %w", displayKey(key), err)
				}
				return nil, rec, nil, nil
			}
		}
		held := &lock.NotAcquiredError{Key: key, Version: uint64(resp.Header.Revision)}
		var holder []byte
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			var s int64
			s, holder = parseLockValue(kvs[0].Value)
			if s > 0 && s <= int64(maxLeaseTTL/time.Second) {
				held.Remaining = time.Duration(s) * time.Second
			}
		}
		return nil, nil, holder, held
	}
}

// opError wraps a request's error, making sure that an error caused by the
// end of ctx matches ctx.Err().
func (l *Locker) opError(op, key string, ctx context.Context, err error) error {
	var ttlErr *lock.TTLError
	if errors.As(err, &ttlErr) {
		return err
	}
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("etcdlock: %s %q: %w (%w)", op, displayKey(key), ctx.Err(), err)
	}
	return fmt.Errorf("etcdlock: %s %q: %w", op, displayKey(key), err)
}

// lease is one holding of a lock: the lock key, created at revision token,
// bound to the etcd lease g.
type lease struct {
	l     *Locker
	key   string // the caller's key
	lk    string // the etcd lock key
	token uint64 // the lock key's CreateRevision
	fp    []byte // the fingerprint kept in the lock key's value (ClaimFingerprint)

	// mu serialises Refresh, Release and Complete on this lease, so that
	// a lease returned to the pool is never renewed on this holding's
	// behalf while it serves another.
	mu sync.Mutex
	g  grant // the etcd lease bound to lk
	// strays are leases that an interrupted Refresh may have bound lk to.
	strays []grant
	// doubt is set when a Release or Complete failed with an unknown
	// outcome: the key may be gone while le.g lives on, so renewing le.g
	// proves nothing, and the next Refresh must check the key itself.
	doubt bool
	done  bool // released, completed or known lost
	// The loss watch (lost.go): lost is made by Lost; ended is set when
	// the lease's own Release or Complete deleted the key; unwatch stops
	// the watch.
	lost    chan struct{}
	ended   bool
	unwatch context.CancelFunc
}

func (le *lease) Key() string   { return le.key }
func (le *lease) Token() uint64 { return le.token }

// Deadline returns the time until which the lock is held at least, by the
// local monotonic clock: when the grant or latest renewal of its etcd lease
// was sent, plus the TTL etcd granted.
func (le *lease) Deadline() time.Time {
	le.mu.Lock()
	defer le.mu.Unlock()
	dl := le.g.expiry()
	for _, s := range le.strays { // the key may be bound to one of them
		if s.expiry().Before(dl) {
			dl = s.expiry()
		}
	}
	return dl
}

// Refresh extends the lock to at least ttl from now. If ttl asks for the
// same lease TTL as the lock has, it renews the etcd lease (one request);
// otherwise, or when an earlier Release, Complete or move of this lease
// failed with an unknown outcome, it moves the lock key, in one transaction
// guarded by the key's creation revision, to a lease with the new TTL, which
// also checks that the key is still this lease's. A lease that etcd no
// longer knows, or a lock key that is gone or belongs to another holder,
// gives an error matching lock.ErrNotHeld.
//
// Renewing touches only this holding's own etcd lease, which no other
// holding shares; a lock key deleted by hand (etcdctl del) outside idemlock
// while its lease lives is noticed by Release and by a Refresh with another
// TTL, not by a same-TTL Refresh.
func (le *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.CheckRefresh(ctx, ttl); err != nil {
		return err
	}
	l := le.l
	req, err := l.leaseSeconds(ttl)
	if err != nil {
		return err
	}
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.done {
		return l.notHeld("refresh", le.key, nil)
	}
	if req == le.g.req && len(le.strays) == 0 && !le.doubt {
		sent := time.Now()
		resp, err := l.leases.KeepAliveOnce(ctx, le.g.id)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			le.done = true
			return l.notHeld("refresh", le.key, err)
		case err != nil:
			return l.opError("refresh", le.key, ctx, err)
		}
		le.g.base, le.g.ttl = sent, resp.TTL
		return nil
	}
	return le.move(ctx, ttl, req)
}

// move binds the lock key to a lease of req seconds. le.mu is held.
func (le *lease) move(ctx context.Context, ttl time.Duration, req int64) error {
	l := le.l
	for attempt := 0; ; attempt++ {
		g, err := l.pool.get(ctx, ttl, req)
		if err != nil {
			return l.opError("refresh", le.key, ctx, err)
		}
		resp, err := l.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(le.lk), "=", int64(le.token))).
			Then(clientv3.OpPut(le.lk, lockValue(g.ttl, le.fp), clientv3.WithLease(g.id))).
			Commit()
		switch {
		case err != nil && errors.Is(err, rpctypes.ErrLeaseNotFound) && attempt == 0:
			continue // the new lease died in the pool: refused whole
		case err != nil:
			// The key may now be bound to g: keep it with the holding
			// until a later outcome is certain.
			le.strays = append(le.strays, g)
			return l.opError("refresh", le.key, ctx, err)
		case !resp.Succeeded:
			l.pool.put(g)
			le.done = true
			return l.notHeld("refresh", le.key, nil)
		}
		// The key left the old lease (and any strays): they serve again.
		l.pool.put(le.g)
		le.releaseStrays()
		le.g = g
		le.doubt = false
		return nil
	}
}

// releaseStrays returns the strays to the pool once the lock key is known to
// be bound to none of them. le.mu is held.
func (le *lease) releaseStrays() {
	for _, s := range le.strays {
		le.l.pool.put(s)
	}
	le.strays = nil
}

// Release deletes the lock key in one transaction guarded by its creation
// revision, so it never deletes a newer holder's key; the etcd lease goes
// back to the Locker's pool. If the key is gone or belongs to another
// holding the error matches lock.ErrNotHeld.
func (le *lease) Release(ctx context.Context) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	l := le.l
	le.mu.Lock()
	defer le.mu.Unlock()
	if le.done {
		return l.notHeld("release", le.key, nil)
	}
	resp, err := l.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(le.lk), "=", int64(le.token))).
		Then(clientv3.OpDelete(le.lk)).
		Commit()
	if err != nil {
		le.doubt = true // the key may be gone: the next Refresh checks it
		return l.opError("release", le.key, ctx, err)
	}
	le.done = true
	if !resp.Succeeded {
		return l.notHeld("release", le.key, nil)
	}
	le.stopLossWatch()
	l.pool.put(le.g)
	le.releaseStrays()
	return nil
}

func (l *Locker) notHeld(op, key string, cause error) error {
	if cause != nil {
		return fmt.Errorf("etcdlock: %s %q: %w: %w", op, displayKey(key), lock.ErrNotHeld, cause)
	}
	return fmt.Errorf("etcdlock: %s %q: %w", op, displayKey(key), lock.ErrNotHeld)
}

// displayKey shortens a key for error messages.
func displayKey(key string) string {
	const max = 64
	if len(key) <= max {
		return key
	}
	return key[:max] + "…"
}
