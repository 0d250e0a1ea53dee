package consullock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// errs makes the package's errors.
const errs = driver.Name("consullock")

// Defaults and limits.
const (
	// DefaultPrefix is where a Locker keeps its keys in Consul's KV store.
	DefaultPrefix = "idemlock/"
	// DefaultMinTTL is Consul's default session_ttl_min: the shortest TTL
	// a default agent accepts.
	DefaultMinTTL = 10 * time.Second
	// MaxTTL is the longest session TTL Consul accepts.
	MaxTTL = 24 * time.Hour
	// TTLStep is the step TTLs are rounded up to.
	TTLStep = time.Second
	// MaxLockDelay is the longest lock-delay Consul accepts.
	MaxLockDelay = 60 * time.Second
	// DefaultKeepWarm is how long a TTL's idle sessions are kept and renewed
	// after its last take.
	DefaultKeepWarm = 10 * time.Second
	// DefaultSessionName names the sessions a Locker creates.
	DefaultSessionName = "idemlock"
	// DefaultMaxRecordSize is the largest idempotency record Complete
	// stores: base64 makes it 4/3 larger in the transaction, which must fit
	// Consul's default txn_max_req_len of 512 KiB.
	DefaultMaxRecordSize = 256 << 10
)

var (
	// ErrPermissionDenied is matched by errors caused by Consul's ACLs
	// refusing the Locker's token.
	ErrPermissionDenied = errors.New("consullock: permission denied by Consul ACLs")
	// ErrClosed is [lock.ErrClosed], which the errors of a Locker used
	// after Close match.
	//
	// Deprecated: use [lock.ErrClosed], which every backend's errors match.
	ErrClosed = lock.ErrClosed
)

// denied is the error of op on key that Consul's ACLs refused, for the
// reason what.
func denied(op, key, what string) error {
	return &driver.Error{Backend: errs, Op: op, Key: key, Err: ErrPermissionDenied, Detail: what}
}

// Option configures a Locker made by [New].
type Option func(*config) error

type config struct {
	prefix    string
	minTTL    time.Duration
	lockDelay time.Duration
	keepWarm  time.Duration
	name      string
	maxRecord int
	queue     bool
}

// WithKeyPrefix is [WithPrefix], under its former name.
//
// Deprecated: use [WithPrefix], the name every backend uses.
func WithKeyPrefix(prefix string) Option { return WithPrefix(prefix) }

// WithPrefix sets the KV prefix under which the Locker keeps its keys
// (default [DefaultPrefix]). It must be empty or end in '/', must not start
// with '/', and may hold only ASCII letters, digits and "-_./", without
// empty, "." or ".." segments.
func WithPrefix(prefix string) Option {
	return func(c *config) error {
		if err := validPrefix(prefix); err != nil {
			return err
		}
		c.prefix = prefix
		return nil
	}
}

// WithMinTTL tells the Locker the agent's session_ttl_min (default
// [DefaultMinTTL]); shorter TTLs are refused with a [*lock.TTLError]
// before any request. It must be a positive whole number of seconds.
func WithMinTTL(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 || d%TTLStep != 0 || d > MaxTTL {
			return errs.InvalidArgument("minimum TTL %v must be a whole number of seconds between 1s and 24h", d)
		}
		c.minTTL = d
		return nil
	}
}

// WithLockDelay sets the lock-delay of the Locker's sessions (default 0, at
// most [MaxLockDelay]): after a session is invalidated (its lease expired),
// its key cannot be taken again for that long. See the package doc for the
// trade-off.
func WithLockDelay(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 || d > MaxLockDelay {
			return errs.InvalidArgument("lock-delay %v must be between 0 and %v", d, MaxLockDelay)
		}
		c.lockDelay = d
		return nil
	}
}

// WithKeepWarm sets how long after the last take of a TTL its idle sessions
// are kept and renewed for the next take (default [DefaultKeepWarm]). Zero
// turns pooling off: every take creates a session (one more round trip) and
// every release destroys it in the background.
func WithKeepWarm(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return errs.InvalidArgument("keep-warm period %v is negative", d)
		}
		c.keepWarm = d
		return nil
	}
}

// WithSessionName sets the Name of the sessions the Locker creates (default
// [DefaultSessionName]); retention sessions get " retention" appended.
func WithSessionName(name string) Option {
	return func(c *config) error {
		if name == "" || len(name) > 256 {
			return errs.InvalidArgument("session name must be 1 to 256 bytes")
		}
		c.name = name
		return nil
	}
}

// WithMaxRecordSize sets the largest idempotency record Complete stores
// (default [DefaultMaxRecordSize]). Raise it only with the agent's
// txn_max_req_len and kv_max_value_size.
func WithMaxRecordSize(n int) Option {
	return func(c *config) error {
		if n <= 0 {
			return errs.InvalidArgument("max record size %d is not positive", n)
		}
		c.maxRecord = n
		return nil
	}
}

// Locker takes leases on Consul. It is safe for concurrent use. It
// implements [lock.Locker], [lock.Backend], [lock.Notifier], [lock.Queuer]
// (see [WithQueue]) and the idempotency Store (Claim and Complete).
//
// It is a coordinator of parts that each own their state and its lock: the
// session pool (lock sessions, the keeper goroutine), the retention
// sessions of idempotency records, and the watchers behind the leases'
// Lost channels. It wires them together and orders their shutdown.
type Locker struct {
	gate   driver.Gate
	client *api.Client
	cfg    config
	owned  func() // set by the URL opener: frees the client it made

	pool      *pool
	retention *retention
	watchers  *watchers
	q         *queue // nil without WithQueue
}

// New returns a Locker that uses client and never closes it, or an error
// matching [lock.ErrInvalidArgument] for a nil client or an invalid option.
// It makes no request.
func New(client *api.Client, opts ...Option) (*Locker, error) {
	cfg := config{
		prefix:    DefaultPrefix,
		minTTL:    DefaultMinTTL,
		keepWarm:  DefaultKeepWarm,
		name:      DefaultSessionName,
		maxRecord: DefaultMaxRecordSize,
	}
	if client == nil {
		return nil, errs.InvalidArgument("nil *api.Client")
	}
	if err := driver.Apply(&cfg, opts); err != nil {
		return nil, err
	}
	p := newPool(client, cfg)
	l := &Locker{
		gate:      driver.Gate{Name: errs},
		client:    client,
		cfg:       cfg,
		pool:      p,
		retention: newRetention(p, cfg),
		watchers:  newWatchers(client),
	}
	if cfg.queue {
		l.q = newQueue(l)
	}
	return l, nil
}

// TryAcquire makes one attempt to take key for ttl (rounded up to whole
// seconds). A held key gives a [*lock.NotAcquiredError] with the holder's
// ModifyIndex as Version and its TTL as Remaining.
func (l *Locker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if err := l.gate.Check(ctx, "take", key, ttl); err != nil {
		return nil, err
	}
	le, _, _, err := l.take(ctx, key, ttl, false, nil)
	if err != nil {
		return nil, err
	}
	return le, nil
}

// take runs the take transaction, preceded by a check that no record
// exists when claim is set. It returns the lease, or the record that a
// claim found, or an error and the holder's fingerprint. A non-nil fp is
// kept in the lock key's value.
func (l *Locker) take(ctx context.Context, key string, ttl time.Duration, claim bool, fp []byte) (*lease, []byte, []byte, error) {
	op := "take"
	if claim {
		op = "claim"
	}
	sttl, err := l.sessionTTL(ttl)
	if err != nil {
		return nil, nil, nil, err
	}
	path := l.lockPath(key)
	recPath := l.recordPath(key)
	for attempt := 0; ; attempt++ {
		s, renewed, err := l.pool.get(ctx, sttl)
		if err != nil {
			return nil, nil, nil, err
		}
		var ops api.TxnOps
		if claim {
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: recPath}})
		}
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVLock, Key: path, Session: s.id, Value: lockValue(sttl, fp)}})
		ok, resp, err := l.txn(ctx, ops)
		if err != nil {
			// The take may have happened: the session must never be reused.
			l.pool.doom(s.id)
			return nil, nil, nil, errs.OpError(op, key, err)
		}
		if ok {
			kv := resp.Results[len(resp.Results)-1].KV
			le := &lease{l: l, path: path, fp: fp, index: kv.ModifyIndex, sess: s}
			le.Init(&l.gate, key, kv.ModifyIndex, renewed, sttl)
			return le, nil, nil, nil
		}
		f := failure(resp.Errors)
		switch {
		case f.denied():
			l.pool.putBack(s)
			return nil, nil, nil, denied(op, key, f.what)
		case claim && f.op == 0 && strings.HasSuffix(f.what, " exists"):
			l.pool.putBack(s)
			rec, found, err := l.readRecord(ctx, recPath)
			if err != nil {
				return nil, nil, nil, errs.OpError("claim", key, fmt.Errorf("reading its record: %w", err))
			}
			if found {
				return nil, rec, nil, nil
			}
			if attempt < 3 {
				continue // the record expired in between: try again
			}
			return nil, nil, nil, errs.OpError("claim", key, errors.New("its record keeps vanishing"))
		case f.held():
			l.pool.putBack(s)
			holder, err := l.heldError(ctx, key, path, f.delayed())
			return nil, nil, holder, err
		case f.invalidSession():
			// The pooled session is gone (expired, agent restarted): so are
			// its peers, likely. Forget them and try with a new one.
			l.pool.purge(sttl)
			if attempt < 2 {
				continue
			}
		default:
			l.pool.putBack(s)
		}
		return nil, nil, nil, errs.OpError(op, key, f.refused())
	}
}

// heldError reads the held key once to learn its holder's index, TTL and
// fingerprint. delayed says the take was refused for the key's lock-delay,
// which outlives the key itself.
func (l *Locker) heldError(ctx context.Context, key, path string, delayed bool) ([]byte, error) {
	held := &lock.NotAcquiredError{Key: key}
	pair, meta, err := l.client.KV().Get(path, (&api.QueryOptions{}).WithContext(ctx))
	switch {
	case err != nil:
		return nil, held // unknown: Version 0 makes a waiter look at once
	case pair == nil && delayed:
		// Free but in its lock-delay: wait for a change after now (or for
		// the waiter's polling bound), not in a loop of refused takes.
		held.Version = meta.LastIndex
		return nil, held
	case pair == nil || pair.Session == "":
		return nil, held // freed since the attempt: a waiter looks at once
	}
	held.Version = pair.ModifyIndex
	held.Remaining = lock.DefaultMaxBackoff // a holder of unknown TTL (not ours): poll
	d, fp := parseLockValue(pair.Value)
	if d > 0 && d <= MaxTTL {
		held.Remaining = d
	}
	return fp, held
}

// txn runs ops as one transaction. ok reports whether it committed; a
// refused transaction has its reasons in resp.Errors.
func (l *Locker) txn(ctx context.Context, ops api.TxnOps) (ok bool, resp *api.TxnResponse, err error) {
	ok, resp, _, err = l.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, nil, apiError(err)
	}
	if resp == nil {
		return false, nil, errors.New("empty transaction response")
	}
	if ok && len(resp.Results) == 0 && hasWrite(ops) {
		return false, nil, errors.New("transaction committed without results")
	}
	return ok, resp, nil
}

func hasWrite(ops api.TxnOps) bool {
	for _, op := range ops {
		if op.KV != nil && (op.KV.Verb == api.KVLock || op.KV.Verb == api.KVUnlock) {
			return true
		}
	}
	return false
}

// txnFailure is the first reason Consul gave for refusing a transaction.
type txnFailure struct {
	op   int
	what string
}

func failure(errs api.TxnErrors) txnFailure {
	for _, e := range errs {
		if e != nil {
			return txnFailure{op: e.OpIndex, what: e.What}
		}
	}
	return txnFailure{op: -1, what: "no reason given"}
}

func (f txnFailure) held() bool {
	return strings.Contains(f.what, "lock is already held") || f.delayed()
}

func (f txnFailure) delayed() bool { return strings.Contains(f.what, "due to lock delay") }

func (f txnFailure) invalidSession() bool { return strings.Contains(f.what, "invalid session") }

func (f txnFailure) denied() bool { return isDeniedText(f.what) }

// refused is the error of a transaction refused for a reason that has no
// meaning of its own.
func (f txnFailure) refused() error { return fmt.Errorf("transaction refused: %s", f.what) }

func isDeniedText(s string) bool {
	return strings.Contains(s, "Permission denied") || strings.Contains(s, "ACL not found")
}

// apiError makes ACL refusals match ErrPermissionDenied.
func apiError(err error) error {
	if err == nil {
		return nil
	}
	var se api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusForbidden || isDeniedText(err.Error()) {
		return fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	return err
}

// sessionTTL rounds ttl up to the TTL step and checks Consul's bounds.
func (l *Locker) sessionTTL(ttl time.Duration) (time.Duration, error) {
	if err := lock.ValidateTTL(ttl); err != nil {
		return 0, err
	}
	if ttl > MaxTTL {
		return 0, &lock.TTLError{TTL: ttl, Reason: "longer than Consul's 24h maximum session TTL"}
	}
	s := roundUp(ttl, TTLStep)
	if s < l.cfg.minTTL {
		return 0, &lock.TTLError{TTL: ttl, Reason: fmt.Sprintf("shorter than the Consul agent's minimum session TTL %v (session_ttl_min; tell the Locker a lower one with consullock.WithMinTTL)", l.cfg.minTTL)}
	}
	return s, nil
}

func roundUp(d, step time.Duration) time.Duration {
	if r := d % step; r != 0 {
		d += step - r
	}
	return d
}

// lockValue is the lock key's value: its TTL, for waiters' Remaining, and
// with a fingerprint, '/' and its bytes.
func lockValue(ttl time.Duration, fp []byte) []byte {
	v := []byte(ttl.String())
	if fp == nil {
		return v
	}
	return append(append(v, '/'), fp...)
}

// parseLockValue splits a lock key's value into its TTL (0 when it is not
// one) and fingerprint (nil without one).
func parseLockValue(v []byte) (time.Duration, []byte) {
	ttl, fp, ok := bytes.Cut(v, []byte("/"))
	d, err := time.ParseDuration(string(ttl))
	if err != nil {
		d = 0
	}
	if !ok {
		return d, nil
	}
	return d, bytes.Clone(fp)
}

func (l *Locker) lockPath(key string) string   { return l.cfg.prefix + "lock/" + escapeKey(key) }
func (l *Locker) recordPath(key string) string { return l.cfg.prefix + "record/" + escapeKey(key) }

const hexDigits = "0123456789ABCDEF"

// escapeKey keeps ASCII letters, digits, '-' and '_' and writes every other
// byte as '~' and two hex digits: injective, and safe in a URL path segment.
func escapeKey(key string) string {
	n := 0
	for i := 0; i < len(key); i++ {
		if !plain(key[i]) {
			n++
		}
	}
	if n == 0 {
		return key
	}
	b := make([]byte, 0, len(key)+2*n)
	for i := 0; i < len(key); i++ {
		c := key[i]
		if plain(c) {
			b = append(b, c)
		} else {
			b = append(b, '~', hexDigits[c>>4], hexDigits[c&15])
		}
	}
	return string(b)
}

func plain(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

func validPrefix(p string) error {
	if p == "" {
		return nil
	}
	bad := func(why string) error {
		return errs.InvalidArgument("key prefix %q %s", p, why)
	}
	if !strings.HasSuffix(p, "/") || strings.HasPrefix(p, "/") {
		return bad("must end in '/' and not start with one")
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; !plain(c) && c != '.' && c != '/' {
			return bad("may hold only ASCII letters, digits and -_./")
		}
	}
	for _, seg := range strings.Split(strings.TrimSuffix(p, "/"), "/") {
		if seg == "" || seg == "." || seg == ".." {
			return bad("has an empty, . or .. segment")
		}
	}
	return nil
}

// Close stops the Locker's background work (session renewal, lost-lease
// watches, queue watches) and destroys its idle sessions and its queue
// session (the entries of its waiters go with it). Leases still held keep
// their sessions until released or expired; retention sessions are left
// to expire with their records. A Locker made by lock.Open also closes its
// client's idle connections. Close may be called more than once.
func (l *Locker) Close() error {
	return l.gate.Close(func() error {
		// The pool last: the other parts hand it sessions to destroy (a
		// watch that finds its lease lost, a retention session created for
		// a Complete that gave up, which retention, closed first, no longer
		// keeps), and its close waits for the creates still running.
		if l.q != nil {
			l.q.close()
		}
		l.watchers.close()
		l.retention.close()
		err := l.pool.close()
		if l.owned != nil {
			l.owned()
		}
		return err
	})
}
