package redislock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/idemlock/lock"
)

// Queued waiting ([WithQueue]).
//
// Each lock key k has, while it has waiters, two sorted sets beside the
// lock, in its hash slot:
//
//	<lock>:q    waiter ids by arrival (the server's TIME in µs)
//	<lock>:qx   the same ids by expiry (the server's TIME in ms)
//
// A ticket's take (ticketTakeScript) takes the key only when it is free
// and no live waiter is ahead of the ticket; otherwise it puts the ticket
// in the queue (ZADD NX: a waiter keeps its place) and sets its expiry to
// the time it promises to come back, the holder's PTTL (or the head's
// expiry, when the key is free and a waiter is ahead), plus queueGrace.
// Every waiter comes back by then (lock.Acquire never waits past
// NotAcquiredError.Remaining), so a live waiter never expires, and a dead
// one (a killed process, a paused client) leaves the queue at most
// queueGrace after the holder's TTL. Expired waiters are removed by every
// script that reads the head.
//
// A release (and a completion) publishes the id of the head of the queue,
// instead of "released": the notifier wakes only the subscription of that
// ticket (and every plain subscription, which any message wakes). A ticket
// that leaves (Close) removes itself; if it was the head and the key is
// free, it publishes the next head's id, so a woken head that gives up
// never strands the queue. Both sets expire on their own when all their
// waiters died.

// queueGrace is how long after the time it promised to come back a waiter
// stays in the queue: room for a slow scheduler, a GC pause and the round
// trip of its next attempt.
const queueGrace = 2 * time.Second

// ticketPrefix starts every waiter id, so that the notifier tells a
// message naming a waiter from "released" and "completed".
const ticketPrefix = "q:"

// WithQueue makes [lock.Acquire] wait in a first-come-first-served queue
// per key (the Locker implements [lock.Queuer]): a release wakes only the
// waiter at the head of the queue, so a hand-off costs about three requests
// whatever the number of waiters, where unqueued waiting costs one take per
// waiter per release. The price: releases and takes of waited-for keys
// run a few more commands inside their scripts, and an Acquire that has
// to wait subscribes before its first queued attempt (a round trip on the
// subscription connection unless another waiter of the Locker already
// watches the key). Lockers with and without WithQueue may share keys:
// unqueued waiters are woken by every release, and queued waiters by every
// release of an unqueued Locker. TryAcquire never looks at the queue.
func WithQueue() Option {
	return func(l *Locker) error { l.queued = true; return nil }
}

// qheadFn is a Lua function returning the id at the head of lock's queue
// after removing the waiters that expired, or nil.
const qheadFn = `
local function qhead(lk)
  local q, qx = lk .. ':q', lk .. ':qx'
  local tm = redis.call('TIME')
  local now = tm[1] * 1000 + math.floor(tm[2] / 1000)
  local gone = redis.call('ZRANGE', qx, '-inf', now, 'BYSCORE', 'LIMIT', 0, 64)
  if #gone > 0 then
    redis.call('ZREM', qx, unpack(gone))
    redis.call('ZREM', q, unpack(gone))
  end
  return redis.call('ZRANGE', q, 0, 0)[1]
end
`

// queuedBody turns a release or complete body into its queued version:
// the message published names the head of the queue, when there is one.
func queuedBody(body, event string) string {
	old := "redis.call('PUBLISH', KEYS[1], '" + event + "')"
	if !strings.Contains(body, old) {
		panic("redislock: no PUBLISH to replace in a script")
	}
	return qheadFn + strings.Replace(body, old, "redis.call('PUBLISH', KEYS[1], qhead(KEYS[1]) or '"+event+"')", 1)
}

// The queued release and complete scripts (with PUBLISH, and with
// SPUBLISH for Cluster).
var (
	releaseScriptQueued         = newScript(queuedBody(releaseBody, "released"))
	releaseScriptQueuedSharded  = newScript(sharded(queuedBody(releaseBody, "released")))
	completeScriptQueued        = newScript(queuedBody(completeBody, "completed"))
	completeScriptQueuedSharded = newScript(sharded(queuedBody(completeBody, "completed")))
)

// ticketTakeScript is a ticket's take.
//
// KEYS[1] lock, KEYS[2] slot counter, KEYS[3] queue, KEYS[4] queue
// expiries; ARGV[1] nonce, ARGV[2] TTL in ms, ARGV[3] the waiter's id,
// ARGV[4] queueGrace in ms. Replies as takeScript; when the key is free but
// a waiter is ahead, the time in ms until that waiter expires with an
// empty token and nonce.
var ticketTakeScript = newScript(qheadFn + `
local t = redis.call('TIME')
` + timeDigits + `
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local function enqueue(life)
  local ms = life + tonumber(ARGV[4])
  redis.call('ZADD', KEYS[3], 'NX', s, ARGV[3])
  redis.call('ZADD', KEYS[4], now + ms, ARGV[3])
  if redis.call('PTTL', KEYS[3]) < ms then
    redis.call('PEXPIRE', KEYS[3], ms)
    redis.call('PEXPIRE', KEYS[4], ms)
  end
end
local v = redis.call('GET', KEYS[1])
if v and string.byte(v) ~= 114 then
  local tok, nonce = string.match(v, '^(%d+):(.*)$')
  if nonce == ARGV[1] then
    return v
  end
  local pttl = redis.call('PTTL', KEYS[1])
  enqueue(math.max(pttl, 0))
  return {pttl, tok or '', nonce or ''}
end
local h = qhead(KEYS[1]) -- KEYS[3] and KEYS[4]
if h and h ~= ARGV[3] then
  local left = math.max((tonumber(redis.call('ZSCORE', KEYS[4], h)) or now) - now, 1)
  enqueue(left)
  return {left, '', ''}
end
if h then
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
end
` + counterStep + `
s = s .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], s, 'PX', ARGV[2])
return s
`)

// leaveBody removes a waiter from the queue and, if it was the head and
// the key is free, wakes the next head. Given the nonce of the waiter's
// take whose reply was lost, it first undoes that take if it took the key
// (nobody holds a lease for it), and then wakes the next head as a release
// would: otherwise the waiters behind, whose waits are bounded by the
// previous holder's TTL, would sleep through the orphan's expiry. With no
// waiter queued it publishes "released", which wakes the waiters of
// unqueued Lockers, as a release does.
//
// KEYS[1] lock, KEYS[2] queue, KEYS[3] queue expiries; ARGV[1] the
// waiter's id, ARGV[2] the nonce of its take of unknown outcome, or "".
// Returns 1 when it woke another waiter, else 0.
const leaveBody = qheadFn + `
local h = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local v = redis.call('GET', KEYS[1])
local mine = ARGV[2] ~= '' and v and string.sub(v, -#ARGV[2] - 1) == ':' .. ARGV[2]
if mine then
  redis.call('DEL', KEYS[1])
  v = nil
elseif h ~= ARGV[1] then
  return 0
end
if v and string.byte(v) ~= 114 then
  return 0
end
local n = qhead(KEYS[1])
if not n and not mine then
  return 0
end
redis.call('PUBLISH', KEYS[1], n or 'released')
return n and 1 or 0
`

var (
	leaveScript        = newScript(leaveBody)
	leaveScriptSharded = newScript(sharded(leaveBody))
)

// queueScripts returns the release and complete scripts of a queued
// Locker.
func queueScripts(cluster bool) (release, complete *script) {
	if cluster {
		return releaseScriptQueuedSharded, completeScriptQueuedSharded
	}
	return releaseScriptQueued, completeScriptQueued
}

// errQueueOff is Queue's error on a Locker made without WithQueue.
var errQueueOff = fmt.Errorf("redislock: queued waiting is off (see WithQueue): %w", errors.ErrUnsupported)

// Queue returns a ticket for key's queue of waiters, subscribed to the
// key's releases (see [WithQueue]); [lock.Acquire] uses it. On a Locker
// made without WithQueue it returns an error matching
// errors.ErrUnsupported, and Acquire waits unqueued.
func (l *Locker) Queue(ctx context.Context, key string) (lock.Ticket, error) {
	if err := l.gate.CheckKey(ctx, "queue", key); err != nil {
		return nil, err
	}
	if !l.queued {
		return nil, errQueueOff
	}
	lk := l.keysFor(key).lock
	id := ticketPrefix + strconv.FormatUint(rand.Uint64(), 36) + strconv.FormatUint(rand.Uint64(), 36)
	t := &ticket{l: l, key: key, lock: lk, id: id}
	t.sub = &subscription{n: &l.notify, key: key, channel: lk, wake: make(chan struct{}, 1), id: id}
	if err := t.sub.subscribe(ctx); err != nil {
		return nil, errs.OpError("subscribe", key, err)
	}
	return t, nil
}

// ticket is one waiter's lock.Ticket.
type ticket struct {
	l      *Locker
	key    string
	lock   string
	id     string
	sub    *subscription
	queued bool   // a take ran that may have put the ticket in the queue
	lost   string // the nonce of its take whose outcome is unknown, if any
	closed bool
}

// Wait blocks until a release names this ticket (or any release of an
// unqueued Locker), or ctx ends. See [subscription.Wait].
func (t *ticket) Wait(ctx context.Context, held *lock.NotAcquiredError) error {
	return t.sub.Wait(ctx, held)
}

// TryAcquire is one queued take, in one round trip (two after a take of
// unknown outcome, which it first undoes by leaving the queue).
func (t *ticket) TryAcquire(ctx context.Context, ttl time.Duration) (lock.Lease, error) {
	l := t.l
	if err := l.gate.CheckTicket(ctx, t.key, ttl, t.closed); err != nil {
		return nil, err
	}
	if t.lost != "" {
		// A retry after a take of unknown outcome, which may hold the key
		// with a lease nobody has while the waiters behind, whose waits
		// are bounded by the previous holder's TTL, sleep through its end.
		// Leave as Close does (undoing that take, waking the next waiter);
		// the take below queues the ticket again, at the back.
		if err := t.leave(ctx); err != nil {
			return nil, err
		}
		t.lost = ""
	}
	ms := millis(ttl)
	_, counter, _, nonce := l.names(t.key, false)
	le := &lease{l: l, lock: t.lock}
	args := []any{nil, nil, 4, t.lock, counter, t.lock + ":q", t.lock + ":qx", nonce, ms, t.id, queueGrace.Milliseconds()}
	le.lockArg = args[3]
	sent := time.Now()
	t.queued = true
	cmd := ticketTakeScript.run(ctx, l.client, args)
	if err := cmd.Err(); err != nil {
		t.lost = nonce // Close, or the next attempt, undoes it if it took the key
		return nil, errs.OpError("take", t.key, err)
	}
	switch v := cmd.Val().(type) {
	case string:
		tok, rest, _ := strings.Cut(v, ":")
		tk, err := parseToken(tok)
		if err != nil || rest != nonce {
			return nil, errs.OpError("take", t.key, fmt.Errorf("unexpected value %q from the server", v))
		}
		t.queued = false // the script took it out of the queue
		le.Init(&l.gate, t.key, tk, sent, msDuration(ms))
		le.value, le.valueArg = v, v
		return le, nil
	case []any:
		if len(v) == 3 {
			e := &lock.NotAcquiredError{Key: t.key}
			if left, _ := v[0].(int64); left > 0 {
				e.Remaining = time.Duration(left) * time.Millisecond
			}
			tok, _ := v[1].(string)
			e.Version, _ = parseToken(tok)
			return nil, e
		}
	}
	return nil, errs.OpError("take", t.key, fmt.Errorf("unexpected script reply %v", cmd.Val()))
}

// leaveTimeout bounds Close's request.
const leaveTimeout = 5 * time.Second

// Close leaves the queue, in one round trip when the ticket was queued,
// waking the next waiter if this one was the head and the key is free,
// and ends the subscription. If the ticket's latest take failed with an
// unknown outcome (lock.Acquire then returns its error and closes the
// ticket), Close also releases the key if that take holds it, and wakes
// the next waiter (a retry, TryAcquire, does so first too). If the request
// fails, the ticket's entry expires on its own (queueGrace after the time
// it promised to come back).
// It is safe to call more than once.
func (t *ticket) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	var err error
	if t.queued {
		ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
		err = t.leave(ctx)
		cancel()
	}
	_ = t.sub.Close()
	return err
}

// leave runs the leave script for the ticket, with the nonce of its take
// of unknown outcome, if any.
func (t *ticket) leave(ctx context.Context) error {
	s := leaveScript
	if t.l.cluster != nil {
		s = leaveScriptSharded
	}
	if err := s.run(ctx, t.l.client, []any{nil, nil, 3, t.lock, t.lock + ":q", t.lock + ":qx", t.id, t.lost}).Err(); err != nil {
		return errs.OpError("leave the queue of", t.key, err)
	}
	return nil
}

// isTicketID reports whether a released message names a queued waiter.
func isTicketID(payload string) bool { return strings.HasPrefix(payload, ticketPrefix) }
