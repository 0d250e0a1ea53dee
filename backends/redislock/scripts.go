package redislock

import (
	"strconv"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts. Each runs as one EVALSHA (go-redis's Script.Run falls back
// to EVAL once when the server answers NOSCRIPT, for example after SCRIPT
// FLUSH or a restart), so each operation is one round trip.
//
// A lock's value is "<token>:<nonce>", the nonce being random per attempt.
// A released or completed lock is left for tombstoneMillis as a tombstone
// "r:<nonce>" that every take treats as free. The nonce and the tombstone
// make each script safe to run twice, as go-redis does when a connection
// breaks after the command was sent: a repeated take finds its own value and
// succeeds with the same token; a repeated release or completion finds its
// own tombstone and succeeds again, instead of reporting a lease it just
// gave up as lost.

// tombstoneMillis is how long a released lock's tombstone lives: longer
// than go-redis's retries of one command after a broken connection.
const tombstoneMillis = 5000

// takeBody is the shared part of the take and claim scripts.
//
// KEYS[1] lock, KEYS[2] slot counter; ARGV[1] nonce, ARGV[2] TTL in ms.
// Returns {1, token} when taken, or {0, PTTL, holder's token} when held.
//
// The token is max(counter + 1, server time in µs): strictly increasing
// while the slot's counter lives, which is forever unless the server loses
// it (a restart without persistence, a flush, a failover that did not
// replicate it), and then still above every earlier token as long as the
// server's clock did not step back by more than the time since they were
// handed out.
const takeBody = `
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 2) ~= 'r:' then
  local tok, nonce = string.match(v, '^(%d+):(.*)$')
  if nonce == ARGV[1] then
    return {1, tok}
  end
  return {0, redis.call('PTTL', KEYS[1]), tok or ''}
end
local t = redis.call('TIME')
local tok = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]))
if last and last >= tok then
  tok = last + 1
end
tok = string.format('%.0f', tok)
redis.call('SET', KEYS[2], tok)
redis.call('SET', KEYS[1], tok .. ':' .. ARGV[1], 'PX', ARGV[2])
return {1, tok}
`

// takeScript takes a lock. See takeBody.
var takeScript = redis.NewScript(takeBody)

// claimScript is the idempotency Store's Claim: KEYS[3] is the record.
// Returns {2, record} when a record is stored, else as takeScript.
var claimScript = redis.NewScript(`
local r = redis.call('GET', KEYS[3])
if r then
  return {2, r}
end
` + takeBody)

// refreshScript extends a lock if it still holds the caller's value.
//
// KEYS[1] lock; ARGV[1] value, ARGV[2] TTL in ms. Returns 1 or 0.
var refreshScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// releaseScript ends a lock if it still holds the caller's value, leaving
// a tombstone, and announces the release on the lock's channel.
//
// KEYS[1] lock; ARGV[1] value, ARGV[2] tombstone, ARGV[3] PUBLISH or
// SPUBLISH. Returns 1 (released now or by a repeat of this call) or 0.
var releaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ` + strconv.Itoa(tombstoneMillis) + `)
  redis.call(ARGV[3], KEYS[1], 'released')
  return 1
end
if v == ARGV[2] then
  return 1
end
return 0
`)

// completeScript is the idempotency Store's Complete: it stores the record
// and ends the lock in one step if the lock still holds the caller's value.
//
// KEYS[1] lock, KEYS[2] record; ARGV[1] value, ARGV[2] tombstone, ARGV[3]
// PUBLISH or SPUBLISH, ARGV[4] record, ARGV[5] retention in ms. Returns 1 or
// 0 as releaseScript.
var completeScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ` + strconv.Itoa(tombstoneMillis) + `)
  redis.call(ARGV[3], KEYS[1], 'completed')
  return 1
end
if v == ARGV[2] then
  return 1
end
return 0
`)
