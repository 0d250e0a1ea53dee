// Package consullock is idemlock's Consul backend: locks held by Consul
// sessions on KV keys, on the github.com/hashicorp/consul/api client.
//
// # How a lock works
//
// A lease is a KV key acquired (Consul's "lock" operation) by a session of
// its own: TTL = the lease's TTL, behavior "delete" (when the session ends,
// the server deletes the key), no health checks (only the TTL decides), and
// lock-delay 0 unless [WithLockDelay] asks for one.
//
//   - Take: one request, a transaction (PUT /v1/txn) whose "lock" operation
//     answers with the key's ModifyIndex. Sessions come ready-made from a
//     per-TTL pool that a background goroutine keeps fresh, so creating a
//     session is off the critical path once a Locker is warm.
//   - Release: one request, a transaction that checks that the lease's
//     session still holds the key and deletes it only at the lease's own
//     ModifyIndex (check-session + delete-cas). The session goes back to the
//     pool for the next take. An uncontended take + release is 2 round trips
//     (Consul's own api.Lock recipe makes 5 on its path, about 7 in all).
//   - Refresh to the same TTL renews the session (one request; a session the
//     server no longer knows means [lock.ErrNotHeld]). A session's TTL cannot
//     change, so Refresh to another TTL moves the lock to a session with that
//     TTL in one owner-checked transaction (unlock by the old session + lock
//     by the new one).
//   - A stale lease never frees or extends a newer holder: every write is
//     checked by the server against the lease's own session and index.
//
// # Fencing tokens
//
// [lock.Lease.Token] is the key's ModifyIndex after the take: the index of
// the Raft log entry that took it. Raft indexes grow across all keys and
// never repeat, so tokens strictly increase across holders, also after a key
// was released or deleted by an expiring session. Caveat: a Consul dev agent
// (-dev) keeps no state and starts its indexes again after a restart; a
// real server keeps them in its Raft log and snapshots.
//
// # TTLs
//
// Session TTLs are counted by the Consul leader. TTLs are rounded up to
// whole seconds (the TTL step). The shortest is the agent's
// session_ttl_min, 10 s unless the agent lowers it; tell the Locker with
// [WithMinTTL] (default [DefaultMinTTL]). The longest is 24 h ([MaxTTL]).
// A TTL outside those bounds is a [*lock.TTLError] (errors.Is
// [lock.ErrInvalidTTL]), never silently changed; if the agent's real
// minimum is higher than the Locker was told, the server's refusal becomes
// the same error.
//
// Consul guarantees that a session lives at least its TTL after its last
// renewal and invalidates it lazily: the leader arms its timer with twice
// the TTL, so a lease that is not refreshed is freed between 1× and about
// 2× its TTL after its take or refresh (later still across a leader
// change). [lock.Deadliner.Deadline] reports the guaranteed lower bound:
// the time the session was created or last renewed, by the local monotonic
// clock before the request was sent, plus the TTL. A pooled session is
// handed to a take only while it was renewed less than an eighth of the TTL
// ago (at most 500 ms), so a lease holds at least its TTL minus that.
//
// One server fault breaks that bound: a Consul server that stands still
// (SIGSTOP, a VM frozen) for longer than a session's TTL runs, when it
// resumes, the session timers that fell due meanwhile at the same time as
// the renewals and takes it accepted on resume, and Consul does not order
// them: a session renewed at that moment can still be invalidated just
// after, so a lease taken or refreshed then is lost well before its TTL
// (the torture harness measured it, RELIABILITY.md). The lease's loss
// watcher cancels lock.KeepAlive's context when the key goes; fencing
// tokens keep increasing, so a fenced resource is safe.
//
// # Waiting
//
// *Locker implements [lock.Notifier]: [lock.Acquire] waits with Consul
// blocking queries (GET /v1/kv/<key>?index=N) on the lock's key, from the
// ModifyIndex that the failed attempt saw ([lock.NotAcquiredError.Version]),
// so a release (or a session expiry, which deletes the key) after the
// attempt is never missed, and a waiter wakes within one blocking-query
// return of it. Cancelling the context aborts the HTTP request at once.
// A refused take makes one read besides the transaction, to learn that
// index and the holder's TTL ([lock.NotAcquiredError.Remaining]). With
// lock-delay, a key can be free and still refused; the end of a
// lock-delay sends no event, so Acquire then retries at its polling cap
// (250 ms by default) until it ends.
//
// Leases implement [lock.LossNotifier]: the first call to Lost starts one
// blocking query on the key, which closes the channel when the key is
// deleted or held by another session; it is stopped by Release and by
// [Locker.Close].
//
// # Consistency
//
// Writes (take, release, refresh moves, Claim, Complete) are transactions
// that go through Raft. The lost-lease watch, whose verdict destroys a
// session, reads in consistent mode, and its blocking queries never wait
// from an index below the lease's own latest write, so it never acts on a
// view older than that write (a leader just elected may serve one in the
// default mode). Other reads (the holder's index after a refused take,
// waiting, reading a record) use Consul's default consistency mode: served
// by the leader, which can be stale only briefly around a leader change; a
// stale read there can cause a spurious wake-up or another attempt, never a
// wrong lock.
//
// # Unknown outcomes and concurrent calls
//
// Refresh, Release and Complete on one lease are serialised. After a write
// whose reply was lost (or whose context ended in flight) the lease is
// suspect: the next Refresh first checks, in one transaction, that its
// session still holds the key at its index, and reports lock.ErrNotHeld
// otherwise. A Release retried after one whose reply was lost returns
// lock.ErrNotHeld if the first one did delete the key: Consul keeps no trace
// of it; the retry never touches a newer holder's key.
//
// # Lock-delay
//
// Consul's lock-delay blocks the keys of an invalidated session from being
// locked again for a while (15 s by default in Consul). It is a safety net
// for holders that do not check fencing tokens: a holder that lost its
// session gets time to notice and stop before another takes over. It also
// delays every takeover after an expiry by that long. idemlock uses fencing
// tokens and lost-lease cancellation instead, so the default here is 0;
// [WithLockDelay] sets it (up to 60 s).
//
// # Keys
//
// A lock's Consul key is <prefix>lock/<escaped key> and an idempotency
// record's is <prefix>record/<escaped key> (prefix [DefaultPrefix] unless
// [WithKeyPrefix]). The escaping keeps ASCII letters, digits, '-' and '_'
// and writes every other byte as '~' and two upper-case hex digits ("a/b c"
// becomes "a~2Fb~20c"). It is injective, so two keys never share a lock,
// and its output has no slashes, dots or control characters, so any valid
// key (NUL, "..", spaces, 1 KiB of UTF-8) survives the URL paths that
// Consul's KV endpoint and blocking queries use. An escaped key is at most
// 3 × [lock.MaxKeyLen] bytes.
//
// # Sessions
//
// Each lease holds one session; a released lease's session is kept for the
// next take of the same TTL (up to 8 idle per TTL) and renewed in the
// background while it waits, for as long as that TTL was used within the
// last [WithKeepWarm] period (default 10 s); then the idle sessions are
// destroyed. [Locker.Close] destroys every idle session. A session whose
// lease was lost, or whose fate is unknown after a failed request, is
// destroyed and never reused. Sessions are named by [WithSessionName]
// (default [DefaultSessionName]), which tells them apart in the agent's
// session list. Sessions are created on a goroutine of the Locker's with a
// context of their own: a take whose context ends while its session is
// being created returns at once, and the session joins the pool when it
// arrives (Close waits for it), so no session is left that the Locker does
// not know.
//
// # Idempotency records
//
// *Locker is an idempotency.Store. Claim is one transaction: check that no
// record exists + lock the key (a second request reads the record when
// there is one). Complete is one transaction: check that the lease's
// session holds the key at its index, delete the lock, write the record.
// Consul KV has no TTL, so a record is locked by a "retention session"
// (behavior delete, no checks, never renewed): when that session expires,
// the server deletes the record. Records of one retention share a session
// for a bucket of an eighth of the retention in whole seconds, at most 1 h
// (under 8 s a record gets a session of its own), whose TTL is the
// retention plus that width, capped at Consul's 24 h. By Consul's session
// contract a record is therefore kept at least its retention (rounded up
// to whole seconds and to the minimum TTL), or 23 h for retentions above
// 23 h; since Consul invalidates sessions at about twice their TTL, records
// typically stay about twice as long. A retention above 24 h is a
// [*lock.TTLError]. Retention sessions outlive the Locker on purpose
// (destroying one would delete its records) and expire on their own.
// A record is at most [DefaultMaxRecordSize] bytes unless
// [WithMaxRecordSize] says otherwise: it travels base64-encoded in a
// transaction that Consul caps at txn_max_req_len (512 KiB by default);
// larger records get a [*RecordTooLargeError] before any request.
//
// # ACLs
//
// The Locker uses the client's token. It needs key write on the prefix
// (key_prefix "idemlock/" { policy = "write" }) and session write on the
// agent's node (session_prefix "" { policy = "write" }); a refusal, or an
// unknown token, is an error matching [ErrPermissionDenied]. An agent
// without ACLs ignores tokens.
//
// # URL
//
// lock.Open accepts consul://[:TOKEN@]HOST:PORT/?option=value&…. With no
// host, the api package's defaults and environment apply (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT, …). The ACL token may
// be given in the password position of the user info (consul://:TOKEN@host
// — url.Redacted hides it), as a token=… or token_file=… option, or through
// CONSUL_HTTP_TOKEN; the opener overwrites a token in the URL with
// "redacted" before returning so that no error message can show it.
// Options: dc (datacenter), tls=true (https), prefix, min_ttl, lock_delay,
// keep_warm (durations such as 1s), session_name, max_record_size (bytes).
// The Locker that Open returns owns its client and closes its idle
// connections on Close.
package consullock

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/idempotency"
)

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
	// ErrClosed is matched by the errors of a Locker used after Close.
	ErrClosed = errors.New("consullock: Locker is closed")
)

// RecordTooLargeError is returned by Complete for a record larger than the
// Locker's limit (see [WithMaxRecordSize]). It matches
// [lock.ErrInvalidArgument].
type RecordTooLargeError struct {
	Size, Limit int
}

func (e *RecordTooLargeError) Error() string {
	return fmt.Sprintf("consullock: idempotency record of %d bytes is larger than the %d-byte limit", e.Size, e.Limit)
}

// Unwrap makes errors.Is(err, lock.ErrInvalidArgument) true.
func (e *RecordTooLargeError) Unwrap() error { return idempotency.ErrRecordTooLarge }

// Option configures a Locker made by [New].
type Option func(*config) error

type config struct {
	prefix    string
	minTTL    time.Duration
	lockDelay time.Duration
	keepWarm  time.Duration
	name      string
	maxRecord int
}

// WithKeyPrefix sets the KV prefix under which the Locker keeps its keys
// (default [DefaultPrefix]). It must be empty or end in '/', must not start
// with '/', and may hold only ASCII letters, digits and "-_./", without
// empty, "." or ".." segments.
func WithKeyPrefix(prefix string) Option {
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
			return fmt.Errorf("%w: consullock: minimum TTL %v must be a whole number of seconds between 1s and 24h", lock.ErrInvalidArgument, d)
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
			return fmt.Errorf("%w: consullock: lock-delay %v must be between 0 and %v", lock.ErrInvalidArgument, d, MaxLockDelay)
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
			return fmt.Errorf("%w: consullock: keep-warm period %v is negative", lock.ErrInvalidArgument, d)
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
			return fmt.Errorf("%w: consullock: session name must be 1 to 256 bytes", lock.ErrInvalidArgument)
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
			return fmt.Errorf("%w: consullock: max record size %d is not positive", lock.ErrInvalidArgument, n)
		}
		c.maxRecord = n
		return nil
	}
}

// Locker takes leases on Consul. It is safe for concurrent use. It
// implements [lock.Locker], [lock.Backend], [lock.Notifier] and the
// idempotency Store (Claim and Complete).
type Locker struct {
	client *api.Client
	cfg    config
	err    error  // a bad option or nil client, returned by every call
	owned  func() // set by the URL opener: frees the client it made

	mu       sync.Mutex
	closed   bool
	classes  map[time.Duration]*class // idle sessions per TTL
	doomed   []string                 // sessions to destroy
	retained map[time.Duration]*retentionSession
	watchers map[*watcher]struct{}
	creates  sync.WaitGroup // session creates running detached
	keeping  bool           // the keeper goroutine runs
	poke     chan struct{}  // wakes the keeper
	wakeAt   time.Time      // when the keeper wakes unless poked
	stop     context.CancelFunc
	stopped  chan struct{} // closed when the keeper returned
}

// New returns a Locker that uses client and never closes it. Invalid
// options (or a nil client) do not panic: every call of the Locker then
// returns an error matching [lock.ErrInvalidArgument].
func New(client *api.Client, opts ...Option) *Locker {
	l := &Locker{
		client: client,
		cfg: config{
			prefix:    DefaultPrefix,
			minTTL:    DefaultMinTTL,
			keepWarm:  DefaultKeepWarm,
			name:      DefaultSessionName,
			maxRecord: DefaultMaxRecordSize,
		},
		classes:  make(map[time.Duration]*class),
		retained: make(map[time.Duration]*retentionSession),
		watchers: make(map[*watcher]struct{}),
		poke:     make(chan struct{}, 1),
	}
	if client == nil {
		l.err = fmt.Errorf("%w: consullock: nil *api.Client", lock.ErrInvalidArgument)
	}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&l.cfg); err != nil && l.err == nil {
			l.err = err
		}
	}
	return l
}

// usable returns the error every call returns on a misconfigured or closed
// Locker.
func (l *Locker) usable() error {
	if l.err != nil {
		return l.err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	return nil
}

// TryAcquire makes one attempt to take key for ttl (rounded up to whole
// seconds). A held key gives a [*lock.NotAcquiredError] with the holder's
// ModifyIndex as Version and its TTL as Remaining.
func (l *Locker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if err := lock.CheckArgs(ctx, key, ttl); err != nil {
		return nil, err
	}
	le, _, err := l.take(ctx, key, ttl, false)
	if err != nil {
		return nil, err
	}
	return le, nil
}

// take runs the take transaction, preceded by a check that no record
// exists when claim is set. It returns the lease, or the record that a
// claim found, or an error.
func (l *Locker) take(ctx context.Context, key string, ttl time.Duration, claim bool) (*lease, []byte, error) {
	if err := l.usable(); err != nil {
		return nil, nil, err
	}
	sttl, err := l.sessionTTL(ttl)
	if err != nil {
		return nil, nil, err
	}
	path := l.lockPath(key)
	recPath := l.recordPath(key)
	for attempt := 0; ; attempt++ {
		s, renewed, err := l.getSession(ctx, sttl)
		if err != nil {
			return nil, nil, err
		}
		var ops api.TxnOps
		if claim {
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: recPath}})
		}
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVLock, Key: path, Session: s.id, Value: ttlValue(sttl)}})
		ok, resp, err := l.txn(ctx, ops)
		if err != nil {
			// The take may have happened: the session must never be reused.
			l.doom(s.id)
			return nil, nil, fmt.Errorf("consullock: take %q: %w", key, err)
		}
		if ok {
			kv := resp.Results[len(resp.Results)-1].KV
			le := &lease{l: l, key: key, path: path, token: kv.ModifyIndex, index: kv.ModifyIndex, sess: s, deadline: renewed.Add(sttl)}
			return le, nil, nil
		}
		f := failure(resp.Errors)
		switch {
		case f.denied():
			l.putBack(s)
			return nil, nil, fmt.Errorf("%w: take %q: %s", ErrPermissionDenied, key, f.what)
		case claim && f.op == 0 && strings.HasSuffix(f.what, " exists"):
			l.putBack(s)
			rec, found, err := l.readRecord(ctx, recPath)
			if err != nil {
				return nil, nil, fmt.Errorf("consullock: claim %q: reading its record: %w", key, err)
			}
			if found {
				return nil, rec, nil
			}
			if attempt < 3 {
				continue // the record expired in between: try again
			}
			return nil, nil, fmt.Errorf("consullock: claim %q: its record keeps vanishing", key)
		case f.held():
			l.putBack(s)
			return nil, nil, l.heldError(ctx, key, path, f.delayed())
		case f.invalidSession():
			// The pooled session is gone (expired, agent restarted): so are
			// its peers, likely. Forget them and try with a new one.
			l.purge(sttl)
			if attempt < 2 {
				continue
			}
		default:
			l.putBack(s)
		}
		return nil, nil, fmt.Errorf("consullock: take %q: transaction refused: %s", key, f.what)
	}
}

// heldError reads the held key once to learn its holder's index and TTL.
// delayed says the take was refused for the key's lock-delay, which
// outlives the key itself.
func (l *Locker) heldError(ctx context.Context, key, path string, delayed bool) error {
	held := &lock.NotAcquiredError{Key: key}
	pair, meta, err := l.client.KV().Get(path, (&api.QueryOptions{}).WithContext(ctx))
	switch {
	case err != nil:
		return held // unknown: Version 0 makes a waiter look at once
	case pair == nil && delayed:
		// Free but in its lock-delay: wait for a change after now (or for
		// the waiter's polling bound), not in a loop of refused takes.
		held.Version = meta.LastIndex
		return held
	case pair == nil || pair.Session == "":
		return held // freed since the attempt: a waiter looks at once
	}
	held.Version = pair.ModifyIndex
	held.Remaining = lock.DefaultMaxBackoff // a holder of unknown TTL (not ours): poll
	if d, err := time.ParseDuration(string(pair.Value)); err == nil && d > 0 && d <= MaxTTL {
		held.Remaining = d
	}
	return held
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

// ttlValue is the lock key's value: its TTL, for waiters' Remaining.
func ttlValue(ttl time.Duration) []byte { return []byte(ttl.String()) }

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
		return fmt.Errorf("%w: consullock: key prefix %q %s", lock.ErrInvalidArgument, p, why)
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
// watches) and destroys its idle sessions. Leases still held keep their
// sessions until released or expired; retention sessions are left to
// expire with their records. A Locker made by lock.Open also closes its
// client's idle connections. Close may be called more than once.
func (l *Locker) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	stop, stopped := l.stop, l.stopped
	ws := make([]*watcher, 0, len(l.watchers))
	for w := range l.watchers {
		ws = append(ws, w)
	}
	l.mu.Unlock()
	if stop != nil {
		stop()
		<-stopped
	}
	for _, w := range ws {
		w.halt()
	}
	l.creates.Wait() // their sessions are destroyed now that l is closed
	l.mu.Lock()
	ids := l.doomed
	l.doomed = nil
	for _, c := range l.classes {
		for _, s := range c.idle {
			ids = append(ids, s.id)
		}
	}
	l.classes = make(map[time.Duration]*class)
	l.mu.Unlock()
	var err error
	if l.err == nil && len(ids) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		for _, id := range ids {
			if derr := l.destroy(ctx, id); derr != nil && err == nil {
				err = fmt.Errorf("consullock: Close: destroying idle session: %w", derr)
			}
		}
		cancel()
	}
	if l.owned != nil {
		l.owned()
	}
	return err
}
