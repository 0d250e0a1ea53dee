// Package redislock is the Redis backend of idemlock, on go-redis v9: one
// [Locker] works with a single node (*redis.Client), Redis Cluster
// (*redis.ClusterClient) and Sentinel (the failover *redis.Client of
// redis.NewFailoverClient, or redis.NewUniversalClient with a MasterName).
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
//	locker, err := redislock.New(rdb)
//	if err != nil { … } // a nil or unsupported client, or a bad option
//	defer locker.Close() // frees the Locker's subscription; rdb stays open
//	err = lock.Do(ctx, locker, "invoice/42", func(ctx context.Context, lease lock.Lease) error { … })
//
// # Guarantees
//
// Take, refresh and release are one Lua script each, run with EVALSHA (and
// EVAL once after the server lost its script cache), so an uncontended take
// plus release costs two round trips. The take is SET NX PX inside the
// script; refresh and release compare the lease's own value (its fencing
// token and a random nonce) before they touch the key, so a stale lease never
// extends or removes a newer holder's lock. The scripts are safe to repeat:
// when go-redis re-sends one after a broken connection, a take that had
// already succeeded returns its own lease, and a release that had already
// happened reports success again, so a lease is never reported held when it
// is not, nor lost when it was merely released.
//
// # Unknown outcomes and concurrent calls
//
// A release (or completion) deletes the lock and leaves a 5 s marker under
// a key of the lease's own, "<lock>:e:<nonce>", which no take writes: a
// Release retried after an error (the reply was lost, the context ended in
// flight) returns nil if the earlier one did release the lock, even when a
// waiter it woke has taken the key since, and the retry never touches that
// waiter's lock. After the marker expired (5 s) such a retry returns
// lock.ErrNotHeld. Refresh always asks the server (the script compares the
// lock's value), so after any error it reports lock.ErrNotHeld once the
// lock is no longer this lease's. Lease methods are safe for concurrent
// use: Refresh is one atomic script, and Release and Complete on one lease
// wait for each other.
//
// # Fencing tokens
//
// [lock.Lease.Token] is max(c+1, t) where c is the last token handed out in
// the key's Cluster hash slot (a counter key per slot and prefix, at most
// 16,384 of them, never per lock key) and t is the server's TIME in
// microseconds. Tokens therefore increase strictly for every key, across
// holders and across expiry, without any per-key state surviving the lock
// (c+1 is computed on the decimal digits, exact up to the largest uint64).
// If the server loses a counter (a restart without persistence, FLUSHALL, a
// failover before the counter was replicated) the time floor keeps tokens
// increasing, provided the (new) server's clock is not behind the time the
// lost tokens were handed out: keep the servers' clocks synchronised.
//
// # TTLs
//
// TTLs are counted by the server (PX) in whole milliseconds; a TTL that is
// not a multiple of a millisecond is rounded up. [lock.Deadliner] reports
// the local time the take or refresh was sent plus the TTL: a lower bound of
// the server's expiry.
//
// # Waiting
//
// *Locker implements [lock.Notifier], which [lock.Acquire] uses: a release
// publishes on a channel named like the lock key — PUBLISH on a single node
// or Sentinel, SPUBLISH (sharded pub/sub, Redis 7) in Cluster, so the event
// stays on the key's shard. One subscription connection per Locker (in
// Cluster: per master node that has waiters) serves all waiters, with one
// receiving goroutine each; channels are reference-counted, subscribed on
// the first waiter and unsubscribed after the last. Subscribe returns only
// after the server confirmed the subscription (a PING sent behind the
// SUBSCRIBE came back), so a release after Subscribe is never missed. If the
// subscription connection breaks or the key's slot moves to another node,
// every waiter is woken and re-subscribes before it tries again. Expiry
// publishes nothing: a waiter never sleeps past the PTTL that the failed
// take reported in the same round trip ([lock.NotAcquiredError.Remaining]).
// After [Locker.Close], or when re-subscribing fails, [lock.Acquire] goes on
// by polling.
//
// With [WithQueue] the Locker also implements [lock.Queuer]: waiters queue
// per key, first come, first served, in two sorted sets beside the lock
// ("<lock>:q" by arrival, "<lock>:qx" by expiry); a release publishes the
// id of the head only, whose notifier alone wakes, so a hand-off costs
// about three requests whatever the number of waiters (unqueued, one per
// waiter). A waiter that gives up leaves the queue and wakes the next one
// if it was the head of a free key; a waiter that dies expires 2 s after
// the holder's deadline it promised to come back at. See [WithQueue] for
// the trade-off. The queued scripts also run ZADD, ZRANGE, ZREM and ZSCORE
// on those keys (covered by the same ACL key pattern).
//
// # Keys
//
// A lock key k is stored as "<prefix>{<k>}" (prefix "idemlock:" unless
// [WithPrefix] says otherwise), where '%' and '}' in k are written as "%25"
// and "%7D" so that the hash tag is always exactly the escaped key, whatever
// bytes k holds. When the escaped key is longer than 128 bytes the tag is
// "%#" plus the base64url SHA-256 of k instead. Different keys never share a
// lock (up to SHA-256 collisions). The idempotency record of k is
// "<prefix>{<k>}:r"; the fencing counters are "<prefix>{%!<n>}". Every key
// one script touches is in one hash slot. SCAN with MATCH "<prefix>*" finds
// them all, and the ACL key and channel patterns "~<prefix>*" and
// "&<prefix>*" cover everything the Locker touches (its commands are EVALSHA,
// EVAL, (S)SUBSCRIBE, (S)UNSUBSCRIBE and PING; the scripts run GET, SET,
// DEL, PTTL, PEXPIRE, TIME and (S)PUBLISH). A release leaves
// "<prefix>{<k>}:e:<nonce>" for 5 s (see above).
//
// # Health, limits and administration
//
// *Locker implements the contract's optional interfaces: [Locker.Ping]
// (one PING, for readiness probes: lock.Open does not connect, so it
// succeeds for a server that is down), [Locker.TTLLimits] (whole
// milliseconds, no minimum or maximum), lock.Admin ([Locker.Inspect],
// [Locker.ForceRelease], [Locker.DeleteRecord], taking the caller's key and
// escaping or hashing it as above) and idempotency.FingerprintClaimer
// ([Locker.ClaimFingerprint]: the fingerprint is kept in the lock's value).
//
// Loss detection: Redis tells no client that a key was deleted (keyspace
// notifications need server configuration), so a lease learns that its
// lock was deleted by hand, or by ForceRelease, from its next Refresh:
// under lock.KeepAlive with the default interval, at most a third of the
// TTL plus one round trip later.
//
// # URLs
//
// Importing the package registers these schemes with [lock.Open]:
//
//	redis://[user:password@]host:port[/db][?options]          single node
//	rediss://…                                                 same, over TLS
//	redis+cluster://[user:password@]host:port[,host:port…][?options]
//	rediss+cluster://…                                         Cluster over TLS
//	redis+sentinel://[user:password@]sentinel:port[,sentinel:port…][/db]?master_name=name[&options]
//	rediss+sentinel://…                                        Sentinel over TLS
//
// Options are go-redis's own URL options (redis.ParseURL,
// redis.ParseClusterURL, redis.ParseFailoverURL: dial_timeout, pool_size,
// addr=host:port for more seeds, which IPv6 seeds need, …) plus
// key_prefix=… for [WithPrefix] and queue=true for [WithQueue]. The opener turns on go-redis's
// ContextTimeoutEnabled unless the URL says context_timeout_enabled=false,
// so context deadlines bound every command. Errors match [lock.ErrInvalidURL]
// and never show the password. The Locker owns the client it made and
// closes it in Close. Open makes no request and keeps no reference to its
// context: the context does not matter after Open returns.
//
// # Caveats
//
//   - Redis replicates asynchronously. A failover (Sentinel or Cluster) can
//     lose a lock that the old master had not yet replicated, and a second
//     holder can then take it. Check the fencing token at the protected
//     resource when that matters; WAIT-based replication is not attempted.
//   - go-redis bounds a command by its ReadTimeout, or by the context's
//     deadline when ContextTimeoutEnabled is set; cancelling a context with
//     no deadline does not interrupt a command already sent, and opening a
//     new connection (dial and handshake) is bounded by DialTimeout alone.
//     Waiting in Subscribe and Wait honours cancellation at once.
//   - The scripts need Redis 6.2 or later (SET … GET), and Cluster needs
//     Redis 7.0 or later (sharded pub/sub); the package is tested with
//     Redis 7.0 on a single node, a 3-master Cluster and a Sentinel.
//     *redis.Ring is not supported.
//   - A release or completion leaves a small marker key for 5 s (see
//     Unknown outcomes): budget about one small key per release per 5 s.
//   - Records given to [Locker.Complete] are limited to 512 MiB, Redis's
//     default proto-max-bulk-len (see [WithMaxRecordSize]).
package redislock

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"github.com/redis/go-redis/v9"
)

// errs makes the package's errors.
const errs = driver.Name("redislock")

// DefaultPrefix is the key prefix used unless [WithPrefix] sets another.
const DefaultPrefix = "idemlock:"

// DefaultMaxRecordSize is the largest record [Locker.Complete] stores
// unless [WithMaxRecordSize] sets another: Redis's default
// proto-max-bulk-len, 512 MiB.
const DefaultMaxRecordSize = 512 << 20

var (
	// ErrRecordTooLarge is matched by the error of [Locker.Complete] for a
	// record over the size limit.
	//
	// Deprecated: it is [lock.ErrRecordTooLarge], which every backend's
	// error matches; use that.
	ErrRecordTooLarge = lock.ErrRecordTooLarge
	// ErrClosed is matched by the error of [Locker.Subscribe] after
	// [Locker.Close].
	//
	// Deprecated: it is [lock.ErrClosed]; use that.
	ErrClosed = lock.ErrClosed
)

// Locker takes leases on Redis. It is safe for concurrent use. Make one
// with [New] (or [lock.Open]) and Close it when done.
type Locker struct {
	gate      driver.Gate
	client    redis.UniversalClient
	cluster   *redis.ClusterClient // non-nil in Cluster mode
	release   *script              // the release script: PUBLISH, or SPUBLISH in Cluster mode
	complete  *script              // the complete script, likewise
	prefix    string
	maxRecord int
	owned     io.Closer // the client, when the Locker owns it (lock.Open)
	notify    notifier
	queued    bool // WithQueue
}

// Option configures a [Locker]; [New] reports a bad one.
type Option func(*Locker) error

// WithPrefix sets the prefix of every Redis key and channel the Locker uses
// (default [DefaultPrefix]), so that applications sharing a server can keep
// their locks apart. Lockers that share a prefix share locks. The prefix
// must not contain '{' or '}', which would change the Cluster hash tag;
// otherwise [New] returns an error matching [lock.ErrInvalidArgument]. An
// empty prefix is allowed.
func WithPrefix(prefix string) Option {
	return func(l *Locker) error {
		if strings.ContainsAny(prefix, "{}") {
			return errs.InvalidArgument("key prefix %q contains '{' or '}'", prefix)
		}
		l.prefix = prefix
		return nil
	}
}

// WithMaxRecordSize sets the largest record [Locker.Complete] accepts, in
// bytes (default [DefaultMaxRecordSize]); larger records get an error
// matching [lock.ErrRecordTooLarge]. Lower it to protect the server's
// memory; raising it past the server's proto-max-bulk-len makes the server
// refuse the command instead. For a non-positive size [New] returns an
// error matching [lock.ErrInvalidArgument].
func WithMaxRecordSize(n int) Option {
	return func(l *Locker) error {
		if n <= 0 {
			return errs.InvalidArgument("max record size %d is not positive", n)
		}
		l.maxRecord = n
		return nil
	}
}

// New returns a Locker on client, which may be a *redis.Client (single node
// or Sentinel failover client) or a *redis.ClusterClient. The Locker never
// closes client. A nil or unsupported client, or a bad option, is an error
// matching [lock.ErrInvalidArgument].
func New(client redis.UniversalClient, opts ...Option) (*Locker, error) {
	l := &Locker{gate: driver.Gate{Name: errs, ServeAfterClose: true}, client: client, release: releaseScript, complete: completeScript, prefix: DefaultPrefix, maxRecord: DefaultMaxRecordSize}
	switch c := client.(type) {
	case nil:
		return nil, errs.InvalidArgument("nil client")
	case *redis.Client:
		if c == nil {
			return nil, errs.InvalidArgument("nil *redis.Client")
		}
	case *redis.ClusterClient:
		if c == nil {
			return nil, errs.InvalidArgument("nil *redis.ClusterClient")
		}
		l.cluster, l.release, l.complete = c, releaseScriptSharded, completeScriptSharded
	case *redis.Ring:
		return nil, errs.InvalidArgument("*redis.Ring is not supported (use a ClusterClient to shard locks)")
	}
	if err := driver.Apply(l, opts); err != nil {
		return nil, err
	}
	if l.queued {
		l.release, l.complete = queueScripts(l.cluster != nil)
	}
	l.notify.l = l
	return l, nil
}

// Close stops the Locker's subscription connections and their goroutines,
// waking any waiter, and closes the client if the Locker owns it (one made
// by [lock.Open]); a client passed to [New] stays open. Leases and takes
// keep working with a client that stays open ([lock.Acquire] goes on by
// polling); Subscribe returns an error matching [lock.ErrClosed]. Close is
// safe to call more than once.
func (l *Locker) Close() error {
	return l.gate.Close(func() error {
		l.notify.close()
		if l.owned != nil {
			return l.owned.Close()
		}
		return nil
	})
}

// keysFor returns the Redis names of key.
func (l *Locker) keysFor(key string) keys { return keysFor(l.prefix, key) }

// TryAcquire takes key for ttl if it is free, in one round trip. When the
// key is held it returns a *lock.NotAcquiredError carrying the holder's
// remaining TTL and fencing token (as Version).
func (l *Locker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if err := l.gate.Check(ctx, "take", key, ttl); err != nil {
		return nil, err
	}
	le, _, _, err := l.take(ctx, takeScript, key, ttl, false, nil)
	if err != nil {
		return nil, err
	}
	if le == nil { // a record: the take script never answers that
		return nil, errs.OpError("take", key, errors.New("unexpected record in the reply"))
	}
	return le, nil
}

// take runs the take script, or with claim the claim script, and
// interprets its answer: a lease, a record (claim only), or an error and
// the holder's fingerprint. A non-nil fp is kept in the lock's value, after
// the nonce (see fingerprintSep).
func (l *Locker) take(ctx context.Context, s *script, key string, ttl time.Duration, claim bool, fp []byte) (*lease, []byte, []byte, error) {
	ms := millis(ttl)
	lockKey, counter, record, nonce := l.names(key, claim)
	if fp != nil {
		nonce += fingerprintSep + base64.RawURLEncoding.EncodeToString(fp)
	}
	le := &lease{l: l, lock: lockKey}
	// The command's arguments live in the lease, which saves an allocation;
	// only this call uses them.
	args := append(le.args[:2], 2, lockKey, counter)
	if claim {
		args[2] = 3
		args = append(args, record)
	}
	args = append(args, nonce, ms)
	le.lockArg = args[3]
	sent := time.Now()
	cmd := s.run(ctx, l.client, args)
	if err := cmd.Err(); err != nil {
		return nil, nil, nil, errs.OpError("take", key, err)
	}
	switch v := cmd.Val().(type) {
	case string: // taken (now, or by an earlier run of this very call): the lock's value
		tok, rest, _ := strings.Cut(v, ":")
		t, err := parseToken(tok)
		if err != nil || rest != nonce {
			return nil, nil, nil, errs.OpError("take", key, fmt.Errorf("unexpected value %q from the server", v))
		}
		le.Init(&l.gate, key, t, sent, msDuration(ms))
		le.value, le.valueArg = v, cmd.Val() // already an interface value: no conversion
		return le, nil, nil, nil
	case []any:
		switch {
		case len(v) == 3: // held: {PTTL, holder's token, holder's nonce}
			e := &lock.NotAcquiredError{Key: key}
			if pttl, _ := v[0].(int64); pttl > 0 {
				e.Remaining = time.Duration(pttl) * time.Millisecond
			}
			tok, _ := v[1].(string)
			e.Version, _ = parseToken(tok)
			holder, _ := v[2].(string)
			return nil, nil, fingerprintOf(holder), e
		case len(v) == 1 && claim: // {record}
			rec, ok := v[0].(string)
			if !ok {
				return nil, nil, nil, errs.OpError("claim", key, fmt.Errorf("unexpected record %T", v[0]))
			}
			return nil, []byte(rec), nil, nil
		}
	}
	return nil, nil, nil, errs.OpError("take", key, fmt.Errorf("unexpected script reply %v", cmd.Val()))
}

func parseToken(s string) (uint64, error) {
	tok, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("unexpected token %q from the server", s)
	}
	return tok, nil
}

// millis converts a positive TTL to whole milliseconds, rounding up.
func millis(ttl time.Duration) int64 { return driver.Ceil(ttl, time.Millisecond) }

// msDuration converts milliseconds back to a Duration, saturating.
func msDuration(ms int64) time.Duration { return driver.Units(ms, time.Millisecond) }
