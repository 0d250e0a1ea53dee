package etcdlock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
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

// errs makes the package's errors.
const errs = driver.Name("etcdlock")

var (
	// ErrClosed is matched by the error of a Locker's methods that start
	// new work after Close. Leases taken before Close can still be
	// refreshed and released.
	//
	// Deprecated: it is [lock.ErrClosed]; use that.
	ErrClosed = lock.ErrClosed
	// ErrRecordTooLarge is matched by the error of Complete for a record
	// above the Locker's limit (see [WithMaxRecordSize]); the lease is left
	// as it was.
	//
	// Deprecated: it is [lock.ErrRecordTooLarge], which every backend's
	// error matches; use that.
	ErrRecordTooLarge = lock.ErrRecordTooLarge
)

// Option configures a Locker made by [New]; New reports a bad one.
type Option func(*config) error

type config struct {
	prefix        string
	poolSize      int
	slack         time.Duration
	timeout       time.Duration
	maxRecord     int
	bucket        time.Duration // 0: derived from each retention
	clientCloseFn func() error  // set by the URL opener only: the owned client's Close
	queue         bool          // WithQueue
}

// WithPrefix sets the etcd key prefix under which the Locker keeps its keys
// (default [DefaultPrefix]). Lockers that must exclude each other use the
// same prefix. Any string is valid, the empty one included; Lockers with
// different prefixes share no lock unless one prefix extends the other
// (prefix "a/" keeps lock "l/x" where prefix "a/l/" keeps lock "x").
func WithPrefix(prefix string) Option {
	return func(c *config) error {
		c.prefix = prefix
		return nil
	}
}

// WithLeasePool sets how many unused etcd leases the Locker keeps ready per
// TTL class (default [DefaultLeasePool]), so that a take needs no lease grant
// on its critical path. Zero turns the pool off: every take then grants a
// lease first (one more round trip) and every release revokes it in the
// background.
func WithLeasePool(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return errs.InvalidArgument("lease pool size %d is negative", n)
		}
		c.poolSize = n
		return nil
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
	return func(c *config) error {
		if d < 0 || d > maxTTLSlack {
			return errs.InvalidArgument("TTL slack %v outside [0, %v]", d, maxTTLSlack)
		}
		c.slack = d
		return nil
	}
}

// WithTimeout bounds the Locker's background requests (granting, renewing
// and revoking pooled leases) and Close (default [DefaultTimeout]).
func WithTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return errs.InvalidArgument("timeout %v is not positive", d)
		}
		c.timeout = d
		return nil
	}
}

// WithMaxRecordSize sets the largest record Complete accepts, in bytes
// (default [DefaultMaxRecordSize]). Raise it only together with etcd's
// --max-request-bytes (1.5 MiB by default).
func WithMaxRecordSize(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return errs.InvalidArgument("max record size %d is not positive", n)
		}
		c.maxRecord = n
		return nil
	}
}

// WithRetentionBucket sets how long one retention lease keeps accepting new
// idempotency records (default: a sixteenth of the retention, between one
// second and an hour). Records share retention leases by bucket, so Complete
// needs no lease grant of its own when warm, and a record expires between
// its retention and its retention plus the bucket after it was stored.
func WithRetentionBucket(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Second || d > 24*time.Hour {
			return errs.InvalidArgument("retention bucket %v outside [1s, 24h]", d)
		}
		c.bucket = d
		return nil
	}
}

// Locker takes locks on an etcd cluster. It is safe for concurrent use. Its
// methods return an error matching [lock.ErrClosed] after Close, except the
// methods of leases taken before, which keep working as long as the client
// is open.
type Locker struct {
	gate    driver.Gate
	client  *clientv3.Client
	kv      clientv3.KV
	leases  clientv3.Lease
	watcher clientv3.Watcher // owned: one watch stream for all subscriptions
	cfg     config
	pool    *pool
	ret     retention

	q queueState // WithQueue's lease and watches
}

// New returns a Locker that keeps its locks on the etcd cluster client talks
// to. The Locker never closes client; close the Locker (which frees its
// pooled leases and its watch stream) before the client.
//
// Invalid arguments (a nil client, an out-of-range option) are reported
// here, once, by an error matching lock.ErrInvalidArgument, never by a
// panic.
func New(client *clientv3.Client, opts ...Option) (*Locker, error) {
	cfg := config{
		prefix:    DefaultPrefix,
		poolSize:  DefaultLeasePool,
		slack:     DefaultTTLSlack,
		timeout:   DefaultTimeout,
		maxRecord: DefaultMaxRecordSize,
	}
	if client == nil {
		return nil, errs.InvalidArgument("nil client")
	}
	if err := driver.Apply(&cfg, opts); err != nil {
		return nil, err
	}
	l := &Locker{gate: driver.Gate{Name: errs}, client: client, cfg: cfg}
	l.kv = client.KV
	l.leases = client.Lease
	l.watcher = clientv3.NewWatcher(client)
	l.pool = newPool(l.leases, cfg.poolSize, cfg.timeout)
	l.ret.cur = make(map[int64]grant)
	return l, nil
}

// Close frees what the Locker owns: it stops its background work, revokes
// the leases it pooled (best effort, within [WithTimeout]: a lease it cannot
// revoke expires on its own) and ends its watch stream (subscriptions then
// wake and report [lock.ErrClosed]). Leases that are held stay held until released or
// expired. Close never closes a client passed to New; a Locker made by
// lock.Open closes its client too. Safe to call more than once.
func (l *Locker) Close() error {
	return l.gate.Close(func() error {
		l.pool.close()
		if l.leases != nil {
			l.closeQueue()
		}
		err := l.watcher.Close()
		if l.cfg.clientCloseFn != nil {
			err = errors.Join(err, l.cfg.clientCloseFn())
		}
		return err
	})
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
	if err := l.gate.Check(ctx, "take", key, ttl); err != nil {
		return nil, err
	}
	le, _, _, err := l.take(ctx, key, ttl, false, nil)
	return driver.LeaseOf(le), err
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
			return nil, nil, nil, errs.OpErrorCtx(ctx, "take", key, err)
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
			return nil, nil, nil, errs.OpErrorCtx(ctx, "take", key, err)
		}
		if resp.Succeeded {
			return newLease(l, key, lk, uint64(resp.Header.Revision), g, fp), nil, nil, nil
		}
		l.pool.put(g)
		if claim {
			if kvs := resp.Responses[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
				_, rec, err := decodeRecord(kvs[0].Value)
				if err != nil {
					return nil, nil, nil, errs.OpError("claim", key, err)
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
