// Package memcachedlock is idemlock's memcached backend, on the
// github.com/bradfitz/gomemcache client:
//
//	mc := memcache.New("127.0.0.1:11211")
//	locker, err := memcachedlock.New(mc)
//	if err != nil { … } // a nil client or a bad option
//	lease, err := lock.Acquire(ctx, locker, "invoice/42", 10*time.Second)
//
// # How it works
//
// A key's lock is one memcached item whose value names the lease that holds
// it (a random 128-bit owner id).
//
//   - Take: `add` of the item with the TTL as its expiry (atomic: it fails if
//     the item exists), then `incr` of a fencing counter (see Fencing tokens),
//     then `gets` of the item: if it no longer carries this lease's owner id
//     (it vanished between the add and the incr, and perhaps another take
//     added it again and drew a smaller token), the take hands out no
//     lease, so that token order always follows take order, and reports
//     an unknown outcome (see Guarantees and caveats).
//   - Refresh: `gets` (the item must still carry this lease's owner id) then
//     `cas` with the CAS id just read and the new expiry.
//   - Release: `gets` then `cas` with an expiry in the past, which memcached
//     treats as "expired at once": a compare-and-delete. A stale lease's
//     release or refresh finds another owner id, or the cas finds another
//     CAS id, and changes nothing. Nothing ever deletes or touches a lock by
//     name alone.
//
// An uncontended take + release is 5 requests (add, incr, gets, gets, cas); a
// refresh is 2; a failed take 1. Fewer would need something gomemcache or
// memcached 1.6.18 lacks: the client sends one command per request (no
// pipelining of add and incr) and a store never returns its CAS id; a
// release by a CAS id remembered from the take would be unsafe, since CAS
// ids restart at 1 when memcached restarts, so after a restart a stale
// lease's id can equal a new holder's; and the meta protocol's client-chosen
// CAS ids (ms/md E flag), which would make that safe, are newer than 1.6.18.
//
// After a memcached restart every pooled connection fails once with EOF;
// gets, add and incr, whose repetition is harmless, are retried on a fresh
// connection, so a restart shows up as lost leases (lock.ErrNotHeld), not
// as errors; a take whose retried add finds the key taken again meanwhile
// by another client is refused, so that lock.Acquire waits on.
//
// # Contexts
//
// gomemcache takes no context, so a call runs its requests on a goroutine
// of the Locker's and returns as soon as its context ends, with an error
// matching ctx.Err(). Its caller has abandoned it, and its outcome is
// handled as that of a request whose reply was lost (below): the call goes
// on until its request in flight is answered or the client's Timeout
// passes, and then stops, except that a take whose add went through
// finishes and gives its key back (owner-checked); a lease call's effect
// is found out by the lease's next call. Close waits for abandoned calls, so no goroutine outlives the
// Locker. A call whose context can never end (context.Background) runs on
// the caller's goroutine.
//
// Abandoning the call is the simplest correct way with gomemcache, and the
// only one without forking it: a request cannot be tied to its context
// below the API. The client picks a pooled connection inside each call
// and sets that connection's deadline from its Timeout before every
// request, so a connection wrapper whose deadline came from the caller's
// context would not know which call it serves and would be overridden;
// and the client's dialer (the caller's own DialContext, which a backend
// must not replace) gets a context of the client's, not the caller's.
//
// # Concurrent calls and unknown outcomes
//
// Refresh, Release and Complete on one lease are serialised (each is a gets
// and a cas, which two calls at once would interleave), abandoned ones
// included: a call waits, as long as its context allows, for the requests
// of an earlier call on the lease that its caller abandoned. A request
// whose reply was lost (a timeout) may have been applied: the next call on
// the lease reads the item again before it reports anything, so it reports
// lock.ErrNotHeld if a lost release went through or another lease took
// the key since. memcached keeps no trace of a release, so a Release
// retried after one whose reply was lost returns lock.ErrNotHeld when the
// first one did release the key. A take whose `add` reply was lost gives
// the item back (owner-checked) before it returns its error, so the key is
// not left locked by nobody until its TTL.
//
// # Fencing tokens
//
// Tokens come from 64 counter items ("stripes"), chosen by a hash of the key,
// and are taken with `incr` after the `add` succeeded and checked by a
// `gets` after it, so that a token is always handed out while its lease
// holds the lock: tokens of one key strictly increase across holders and
// expiries. When memcached has lost a
// counter (eviction, restart, flush) it is re-seeded with the wall clock in
// nanoseconds since 1970. That value exceeds every token the lost counter
// gave out provided the clock of the machine that re-seeds is not behind the
// clock of the machine that seeded the lost counter by more than that
// counter's age (minus one nanosecond per token it issued): NTP-synchronised
// machines are within milliseconds, and a counter that was lost has usually
// lived far longer. This is the one place where the client's clock matters.
//
// # Guarantees and caveats
//
// memcached is a cache: it may evict a lock item before its TTL under memory
// pressure, and a restart or flush_all loses every lock. Either lets a second
// holder in while the first still believes it holds the lock, so a memcached
// lock is best-effort unless the protected resource checks the fencing
// token; lock.KeepAlive notices the loss at its next refresh. With several
// servers the client shards keys by hash: changing the server list moves
// keys to other servers, where the lock is free, which can also let two
// holders in, and moves a key's token counter too (tokens then restart from
// the clock, as after a loss). Change the list only while no lock is held.
//
// A take refuses with lock.ErrNotAcquired only when its add found
// another item holding the key. A take whose own add went through (or may
// have, its connection having closed with the add in flight) but that
// cannot hand out a lease returns an error of unknown outcome instead (it
// matches neither lock.ErrNotAcquired nor lock.ErrNotHeld), so
// lock.Acquire stops and says why: when its token came after the TTL (a
// slow network or a paused process; the item is given back), when its item
// was gone or replaced at the check after the incr (it expired while the
// process stood still, or was evicted), or when a retried add found an
// item it could not read back. The torture harness found these reported as
// "held by another lease" while only the take's own item held the key,
// which no linearizable lock does.
//
// One case remains (no memcached request can be told apart from a later
// copy of itself): a take whose add is retried after its connection
// closed cannot know whether its first add was applied, or will be. If the
// retry succeeds, the take holds the key as usual; if it finds another
// item, the take is refused (the key was held at that moment). Either way,
// a first add that reaches the server only after the key is free again
// makes an item that holds the key, owned by no lease, until its TTL ends.
// The retry, and the refusal, are what let takes after a server restart,
// when every pooled connection is dead, succeed or wait on rather than
// fail: the client cannot tell a dead pooled connection from one reset
// with the add in flight.
//
// # TTLs
//
// memcached counts expiry in whole seconds on a clock that ticks once a
// second, so an item set to live N seconds may be dropped up to a second
// early. A TTL is therefore rounded up to whole seconds and sent with one
// second more: a lease lives at least its TTL and at most about two seconds
// longer. [lock.Deadliner] reports the time the take or refresh was sent plus
// the rounded-up TTL. memcached reads an expiry over 30 days as an absolute
// Unix time; TTLs longer than [MaxTTL] are rejected with a [*lock.TTLError]
// rather than converted with the client's clock.
//
// # Waiting
//
// memcached cannot notify, so the Locker does not implement lock.Notifier:
// lock.Acquire polls with jittered exponential backoff (lock.WithBackoff).
// A failed take reports no remaining time (NotAcquiredError.Remaining is
// zero): the classic protocol cannot read an item's remaining TTL, and a
// deadline computed by the holder's clock would not be the server's.
//
// # Keys
//
// Item keys are a prefix (default [DefaultPrefix], see [WithPrefix]), a kind
// ("l:" lock, "t:" token counter) and the lock key. A lock key made only of
// printable ASCII other than space (0x21-0x7e) that fits memcached's
// 250-byte limit is used as it is after an "r"; any other key (spaces,
// control characters, non-ASCII, long keys) is replaced by "h" and the
// unpadded base64url SHA-256 of the key. The "r"/"h" marker keeps the two
// forms apart, so two different keys never share an item.
//
// # URL
//
// The scheme "memcached" opens a Locker with a client of its own, closed by
// Close:
//
//	memcached://host:port[,host:port...][/][?timeout=500ms&max_idle_conns=2&prefix=idemlock:]
//
// # Health, limits and administration
//
// *Locker implements the contract's optional interfaces: [Locker.Ping]
// (gomemcache's Ping, a version request to every server, for readiness
// probes: lock.Open makes no request and keeps no reference to its
// context, so it succeeds for a server that is down and its context does
// not matter after it returns), [Locker.TTLLimits] (whole seconds, at most
// [MaxTTL]), lock.Admin ([Locker.Inspect], [Locker.ForceRelease],
// [Locker.DeleteRecord], taking the caller's key and hashing it as the
// leases do) and idempotency.FingerprintClaimer ([Locker.ClaimFingerprint]:
// the fingerprint is kept in the lock item's value). memcached tells no
// client that an item was deleted, so a lease learns that its item was
// deleted by hand, or by ForceRelease, from its next Refresh: under
// lock.KeepAlive with the default interval, at most a third of the TTL plus
// one round trip later.
//
// # Idempotency store
//
// A Locker is also an idempotency.Store. A key's lock and its completed
// record share one item, whose value says which it is: Claim is an `add`
// (and on failure a `get` that returns a stored record), and Complete turns
// this lease's lock into the record with one owner-checked `gets` + `cas`,
// expiring after the retention. A record must fit in one memcached item:
// 1 MiB by default (memcached -I), see [WithMaxItemSize] and
// [ErrRecordTooLarge].
package memcachedlock

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// errs makes the package's errors.
const errs = driver.Name("memcachedlock")

const (
	// DefaultPrefix starts the name of every item a Locker stores.
	DefaultPrefix = "idemlock:"
	// MaxTTL is the longest lease TTL (and record retention) accepted:
	// memcached reads an expiry of more than 30 days as an absolute Unix
	// time, and a TTL is sent rounded up plus one second.
	MaxTTL = (maxRelativeExpiry - 1) * time.Second
	// DefaultMaxItemSize is memcached's default item size limit (-I 1m).
	DefaultMaxItemSize = 1 << 20

	// maxRelativeExpiry is memcached's REALTIME_MAXDELTA: 30 days.
	maxRelativeExpiry = 30 * 24 * 60 * 60
	// maxKeyLen is memcached's key length limit.
	maxKeyLen = 250
	// maxPrefixLen leaves room for a kind and a hashed key (1+43 bytes).
	maxPrefixLen = 200
	// itemOverhead is what an item needs besides its value: a key of up to
	// 250 bytes, the item header and the value's CRLF, rounded up (checked
	// against memcached 1.6.18: with a 250-byte key a value of 1 MiB - 513
	// bytes fits, 1 MiB - 300 does not).
	itemOverhead = 600
)

var (
	// ErrRecordTooLarge is matched by the error of Complete when the record
	// does not fit in one memcached item (see [WithMaxItemSize]). Nothing is
	// stored and the lease still holds its key.
	//
	// Deprecated: it is [lock.ErrRecordTooLarge], which every backend's
	// error matches; use that.
	ErrRecordTooLarge = lock.ErrRecordTooLarge
	// ErrClosed is matched by the error of every call on a Locker, or on a
	// lease of a Locker, after Close.
	//
	// Deprecated: it is [lock.ErrClosed]; use that.
	ErrClosed = lock.ErrClosed
	// ErrNoCAS is matched by the error of a refresh, release or Complete
	// when memcached returned no CAS id: the server runs with -C (CAS
	// disabled), which owner-checked release needs.
	ErrNoCAS = errors.New("memcachedlock: memcached returned no CAS id (is it running with -C?)")
)

// Locker takes leases on memcached items. It is safe for concurrent use.
// Make one with [New] or lock.Open("memcached://...").
type Locker struct {
	gate        driver.Gate
	client      *memcache.Client
	prefix      string
	maxItemSize int
	owned       bool // Close closes client (a Locker made by the URL opener)

	mu    sync.Mutex     // orders calls.Add after a check of closed, before Close's Wait
	calls sync.WaitGroup // calls running on goroutines of the Locker's (see run)
}

// Option configures a Locker; [New] reports a bad one.
type Option func(*Locker) error

// WithPrefix sets the text that starts every item name (default
// [DefaultPrefix]). Lockers that should exclude each other must use the same
// prefix. It must be printable ASCII without spaces, at most 200 bytes;
// for an invalid prefix [New] returns an error matching
// lock.ErrInvalidArgument.
func WithPrefix(prefix string) Option {
	return func(l *Locker) error {
		if err := checkPrefix(prefix); err != nil {
			return errs.InvalidArgument("%w", err)
		}
		l.prefix = prefix
		return nil
	}
}

// checkPrefix says what is wrong with prefix, if anything.
func checkPrefix(prefix string) error {
	if len(prefix) > maxPrefixLen || !plainASCII(prefix) {
		return fmt.Errorf("prefix %q must be at most %d bytes of printable ASCII without spaces", prefix, maxPrefixLen)
	}
	return nil
}

// WithMaxItemSize tells the Locker memcached's item size limit (its -I
// option; default [DefaultMaxItemSize]), which bounds the records Complete
// stores. It must be at least 2 KiB.
func WithMaxItemSize(n int) Option {
	return func(l *Locker) error {
		if n < 2048 {
			return errs.InvalidArgument("max item size %d is below 2 KiB", n)
		}
		l.maxItemSize = n
		return nil
	}
}

// New returns a Locker that stores its locks through client. The Locker never
// closes client. All Lockers that should exclude each other must reach the
// same servers in the same order, with the same prefix. A nil client or a
// bad option is an error matching lock.ErrInvalidArgument.
func New(client *memcache.Client, opts ...Option) (*Locker, error) {
	if client == nil {
		return nil, errs.InvalidArgument("nil *memcache.Client")
	}
	l := &Locker{gate: driver.Gate{Name: errs}, client: client, prefix: DefaultPrefix, maxItemSize: DefaultMaxItemSize}
	if err := driver.Apply(l, opts); err != nil {
		return nil, err
	}
	return l, nil
}

// Close marks the Locker closed: later calls on it and its leases fail with
// [lock.ErrClosed]. It waits for the calls already started, those whose context
// ended included, which run to their end (each of their requests is bounded
// by the client's Timeout): so a take its caller abandoned still gives its
// key back. A Locker made by lock.Open then closes the
// client it made; one made by [New] leaves the caller's client alone. Held
// locks are not released: they expire at their TTL. Close is safe to call
// more than once.
func (l *Locker) Close() error {
	return l.gate.Close(func() error {
		// A barrier: every run that found the Locker open has added its
		// call by the time this lock is taken, and no later run adds one.
		l.mu.Lock()
		//lint:ignore SA2001 the empty critical section is the barrier
		l.mu.Unlock()
		l.calls.Wait()
		if !l.owned {
			return nil
		}
		return l.client.Close()
	})
}

// run calls op on a goroutine of the Locker's and returns its result, or
// an error matching ctx.Err() as soon as ctx ends: gomemcache takes no
// context. op must stop making requests once ctx has ended (each of its
// requests is bounded by the client's Timeout). The result of an op its
// caller abandoned goes to undo when op succeeded; undo may be nil. A ctx
// that can never end (or a nil one, which op reports) runs op on the
// caller's goroutine.
func run[T any](ctx context.Context, l *Locker, op func() (T, error), undo func(T)) (T, error) {
	var zero T
	if ctx == nil || ctx.Done() == nil {
		return op()
	}
	l.mu.Lock()
	if l.gate.IsClosed() {
		l.mu.Unlock()
		return zero, errs.Closed("call", "")
	}
	l.calls.Add(1)
	l.mu.Unlock()
	type result struct {
		v   T
		err error
	}
	done := make(chan result) // unbuffered: a send succeeds only if the caller takes it
	abandoned := make(chan struct{})
	go func() {
		defer l.calls.Done()
		v, err := op()
		select {
		case done <- result{v, err}:
		case <-abandoned:
			if err == nil && undo != nil {
				undo(v)
			}
		}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		close(abandoned)
		return zero, fmt.Errorf("memcachedlock: %w with a request in flight, whose outcome is unknown", ctx.Err())
	}
}

// TryAcquire makes one attempt to take key for ttl: an `add` of the lock item
// and, when it succeeds, an `incr` of the key's token counter. A held key
// gives a *lock.NotAcquiredError.
//
// It returns as soon as ctx ends, with an error matching ctx.Err(); a take
// that went through all the same is given back (see Contexts in the
// package doc).
func (l *Locker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	le, err := run(ctx, l, func() (*lease, error) { return l.take(ctx, key, ttl, nil) }, func(le *lease) { le.giveBack(ctx) })
	if err != nil {
		return nil, err // never a typed nil inside the interface
	}
	return le, nil
}

// take takes key for ttl; a non-nil fp is kept in the lock item's value.
func (l *Locker) take(ctx context.Context, key string, ttl time.Duration, fp []byte) (*lease, error) {
	if err := l.gate.Check(ctx, "take", key, ttl); err != nil {
		return nil, err
	}
	exp, granted, err := expiry(ttl)
	if err != nil {
		return nil, err
	}
	le := &lease{l: l, item: l.lockKey(key), value: newLockValue(fp)}
	le.Init(&l.gate, key, 0, time.Time{}, 0) // for giveBack; again below with the token
	sent := time.Now()
	err = l.add(&memcache.Item{Key: le.item, Value: le.value, Expiration: exp})
	switch {
	case errors.Is(err, memcache.ErrNotStored):
		return nil, &lock.NotAcquiredError{Key: key}
	case err != nil:
		// The add may have been applied with its reply lost: give the lock
		// back if it is ours (owner-checked), so the key is not left
		// locked by nobody until its TTL.
		le.giveBack(ctx)
		return nil, errs.OpError("add", key, err)
	}
	// The lock is ours: the token is taken now, while it holds, so that it
	// orders after every earlier holder's. The take completes even if ctx
	// ends meanwhile; it is more requests.
	token, err := l.nextToken(key)
	if err != nil {
		le.giveBack(ctx)
		return nil, err
	}
	// If the item vanished between the add and the incr (evicted, flushed)
	// another take may have added it again and drawn a smaller token after
	// this one's add: the token order would then not follow the take
	// order. So the take counts only if the item still holds this lease's
	// owner id after the incr; otherwise it is refused.
	it, err := l.get(le.item)
	switch {
	case errors.Is(err, memcache.ErrCacheMiss) || err == nil && !bytes.Equal(it.Value, le.value):
		// This take's add went through and its item is gone since (it
		// expired while this process stood still, or was evicted), and
		// perhaps another take added the key again. Not "held by another
		// lease": this take's own item held the key, and may have turned
		// other takes away meanwhile. Its outcome is reported as unknown,
		// the honest answer.
		return nil, fmt.Errorf("memcachedlock: key %q: the take's lock item was gone before its token was issued (it expired while this process stood still, or was evicted): %w", driver.DisplayKey(key), errTakeVoid)
	case err != nil:
		le.giveBack(ctx)
		return nil, errs.OpError("take: gets", key, err)
	case !time.Now().Before(sent.Add(granted)):
		// The lease ran out while its take was under way (a slow network
		// or a paused process): the item held the key, but no lease may.
		// Given back, owner-checked; reported as unknown for the same
		// reason as a vanished item.
		le.giveBack(ctx)
		return nil, fmt.Errorf("memcachedlock: key %q: the lease ran out (TTL %v) before its token was issued: %w", driver.DisplayKey(key), ttl, errTakeVoid)
	}
	le.Init(&l.gate, key, token, sent, granted)
	return le, nil
}

// nextToken returns the next fencing token for key from its counter stripe,
// re-seeding the stripe from the wall clock if memcached lost it.
func (l *Locker) nextToken(key string) (uint64, error) {
	ckey := l.counterKey(key)
	for range 3 {
		var tok uint64
		err := l.retry(func() (err error) {
			tok, err = l.client.Increment(ckey, 1) // a repeated incr only skips a token
			return err
		})
		switch {
		case err == nil && tok > 0:
			return tok, nil
		case err == nil:
			return 0, fmt.Errorf("memcachedlock: token counter %q wrapped around to 0", ckey)
		case !errors.Is(err, memcache.ErrCacheMiss):
			return 0, errs.OpError("incr", key, err)
		}
		seed := uint64(time.Now().UnixNano())
		err = l.retry(func() error {
			return l.client.Add(&memcache.Item{Key: ckey, Value: strconv.AppendUint(nil, seed, 10)})
		})
		switch {
		case err == nil:
			return seed, nil
		case !errors.Is(err, memcache.ErrNotStored):
			return 0, errs.OpError("seed counter for", key, err)
		}
		// Another Locker seeded it first: increment that.
	}
	return 0, fmt.Errorf("memcachedlock: token counter %q keeps disappearing", ckey)
}

// get reads an item (gets, with its CAS id). A read is safe to repeat, so
// it is retried on a connection the server had closed (see retry).
func (l *Locker) get(item string) (it *memcache.Item, err error) {
	err = l.retry(func() error {
		it, err = l.client.Get(item)
		return err
	})
	return it, err
}

// add stores a lock item if none exists. It is retried on a closed
// connection (see retry); if a retry finds the item present, the item is
// read back: it may be this very add, applied just before the connection
// died. Another item (a lease's or a completed record), or none any more,
// gives memcache.ErrNotStored: the key was held when the retry was
// refused. A read that fails is of unknown outcome.
func (l *Locker) add(it *memcache.Item) error {
	attempts := 0
	err := l.retry(func() error {
		attempts++
		return l.client.Add(it)
	})
	if attempts == 1 || !errors.Is(err, memcache.ErrNotStored) {
		return err
	}
	// The first attempt's connection closed with the add in flight: it
	// may have been applied, or may be yet (a server reads a request it
	// had received after the client saw the connection close; see the
	// package doc), or the connection was dead before it (a restarted
	// server), which the client cannot tell apart. Finding its own item
	// tells it was applied; anything else is a refusal, as the retry was.
	cur, gerr := l.get(it.Key)
	switch {
	case gerr == nil && bytes.Equal(cur.Value, it.Value):
		return nil
	case gerr == nil || errors.Is(gerr, memcache.ErrCacheMiss):
		return err
	default:
		return fmt.Errorf("an add retried after its connection closed found an item it could not read back: %w", gerr)
	}
}

// errTakeVoid is the cause of a take that went through but cannot hand out
// a lease (see take): its outcome is unknown to the caller, so it does not
// match lock.ErrNotAcquired.
var errTakeVoid = errors.New("the take's outcome is unknown")

// retry calls op again while it fails on a connection the server had
// closed: after a memcached restart every pooled connection fails once with
// EOF, and gomemcache does not retry. The request never reached a server
// then. At most one attempt per pooled connection, plus one. Only requests
// whose repetition is harmless go through retry: gets, incr, add (see add);
// never cas, whose repetition would report a conflict with itself.
func (l *Locker) retry(op func() error) error {
	attempts := max(l.client.MaxIdleConns, memcache.DefaultMaxIdleConns) + 1
	for {
		err := op()
		attempts--
		if attempts == 0 || !closedConn(err) {
			return err
		}
	}
}

// closedConn reports whether err means the connection was closed by the
// server, as a pooled connection to a restarted server is.
func closedConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// timeout is the client's per-request timeout.
func (l *Locker) timeout() time.Duration {
	if l.client.Timeout > 0 {
		return l.client.Timeout
	}
	return memcache.DefaultTimeout
}

// expiry converts a TTL to the memcached expiry to send (whole seconds, one
// more than the TTL rounded up) and the time the lease is granted at least.
func expiry(ttl time.Duration) (int32, time.Duration, error) {
	if err := lock.ValidateTTL(ttl); err != nil {
		return 0, 0, err
	}
	if ttl > MaxTTL {
		return 0, 0, &lock.TTLError{TTL: ttl, Reason: fmt.Sprintf("longer than %v: memcached reads an expiry over 30 days as an absolute time", MaxTTL)}
	}
	secs := ttl / time.Second
	if ttl%time.Second != 0 {
		secs++
	}
	return int32(secs) + 1, secs * time.Second, nil
}

// lockValue kinds: the first byte of a lock item's value.
const (
	kindLock   = 'L'
	kindRecord = 'R'
)

// ownerLen is the length of a lock item's value without a fingerprint: the
// kind and the hex owner id.
const ownerLen = 1 + 2*16

// newLockValue returns the value of a fresh lease's lock item: the kind, a
// random owner id and, with a fingerprint, '/' and its bytes.
func newLockValue(fp []byte) []byte {
	var id [16]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand, Go 1.24+)
	n := ownerLen
	if fp != nil {
		n += 1 + len(fp)
	}
	v := make([]byte, n)
	v[0] = kindLock
	hex.Encode(v[1:], id[:])
	if fp != nil {
		v[ownerLen] = '/'
		copy(v[ownerLen+1:], fp)
	}
	return v
}

// fingerprintOf returns the fingerprint a lock item's value carries, or nil.
func fingerprintOf(v []byte) []byte {
	if len(v) <= ownerLen || v[0] != kindLock || v[ownerLen] != '/' {
		return nil
	}
	return append([]byte{}, v[ownerLen+1:]...)
}
