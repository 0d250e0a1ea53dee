package redislock

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts. Each runs as one EVALSHA (and once as EVAL when the
// server answers NOSCRIPT, for example after SCRIPT FLUSH or a restart), so
// each operation is one round trip.
//
// A lock's value is "<token>:<nonce>", the nonce being random per attempt.
// A release or completion deletes the lock and leaves, for tombstoneMillis,
// a marker of its own under "<lock>:e:<nonce>" ("released" or "completed"),
// a key that no take ever writes. The nonce and the marker make each script
// safe to run twice, as go-redis does when a connection breaks after the
// command was sent, and as a caller does after an error: a repeated take
// finds its own value and succeeds with the same token; a repeated release
// or completion finds its own marker and succeeds again, instead of
// reporting a lease it just gave up as lost, even when a waiter it woke has
// taken the key since. (Locks of earlier versions left a tombstone
// "r:<token>:<nonce>" in the lock itself; takes still treat one as free.)
//
// Cost. The server runs scripts one at a time, and under load the server is
// what limits throughput, so the scripts are written for the server's time.
// Every redis.call costs about as much as a small command sent on its own
// (argument objects, command lookup, ACL and statistics, the reply converted
// back to Lua: 5,000 to 9,000 instructions each on Redis 7.0, measured with
// callgrind), and Lua's conversions between numbers and strings (tonumber,
// string.format, a number passed to redis.call) cost a good part of one.
// So a take is four calls (GET, TIME, SET … GET of the counter, SET … PX)
// and a release four (GET, DEL, SET … PX of the marker, PUBLISH), each of
// them needed by a guarantee: TIME and the counter by the fencing tokens,
// the GET and the marker by safe repeats, PUBLISH by notified waiting. Tokens stay
// strings built from TIME's digits, compared by length and then bytes;
// replies are a bulk string or a small array.

// tombstoneMillis is how long the marker of a release or completion lives,
// in milliseconds: longer than go-redis's retries of one command after a
// broken connection, and than a caller's prompt retry. The scripts pass it
// to SET as a string: a Lua number would be formatted with %.17g on every
// call.
const tombstoneMillis = "5000"

// takeBody is the shared part of the take and claim scripts.
//
// KEYS[1] lock, KEYS[2] slot counter; ARGV[1] nonce, ARGV[2] TTL in ms.
// Returns the lock's new value "<token>:<nonce>" when taken, or {PTTL,
// holder's token, holder's nonce} when held (the nonce carries the holder's
// fingerprint, if it claimed with one).
//
// The token is max(counter + 1, server time in µs): strictly increasing
// while the slot's counter lives, which is forever unless the server loses
// it (a restart without persistence, a flush, a failover that did not
// replicate it), and then still above every earlier token as long as the
// server's clock did not step back by more than the time since they were
// handed out.
//
// The time is TIME's seconds followed by its microseconds padded to six
// digits (timeDigits). SET … GET stores it as the counter and returns the
// previous counter in the same call (counterStep); both stay strings:
// Lua's conversions between numbers and strings cost as much as a call.
const takeBody = `
local v = redis.call('GET', KEYS[1])
if v and string.byte(v) ~= 114 then
  local tok, nonce = string.match(v, '^(%d+):(.*)$')
  if nonce == ARGV[1] then
    return v
  end
  return {redis.call('PTTL', KEYS[1]), tok or '', nonce or ''}
end
local t = redis.call('TIME')
` + timeDigits + counterStep + `
s = s .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], s, 'PX', ARGV[2])
return s
`

// timeDigits sets s to the time t (TIME's reply: seconds, microseconds)
// in microseconds, as decimal digits.
const timeDigits = `
local s = t[2]
if #s < 6 then
  s = string.sub('00000' .. s, -6)
end
s = t[1] .. s
`

// counterStep stores the token s in the counter KEYS[2], unless the
// counter is not below it: then the token becomes counter + 1 and is
// stored instead.
//
// The counter only ever holds decimal digits without leading zeros,
// written by this step, so it is below s exactly when it is shorter, or as
// long and smaller byte by byte, and counter + 1 is computed on the digits
// (exact at any length, where Lua's doubles are exact only below 2^53). A
// counter that is not such a number (written by someone else) is compared
// as a Lua number, and ignored when it is not one.
const counterStep = `
local c = redis.call('SET', KEYS[2], s, 'GET')
if c and #c >= #s and (#c > #s or c >= s) then
  if string.find(c, '^[1-9]%d*$') then
    local i = #c
    while string.byte(c, i) == 57 do
      i = i - 1
    end
    if i == 0 then
      s = '1' .. string.rep('0', #c)
    else
      s = string.sub(c, 1, i - 1) .. string.char(string.byte(c, i) + 1) .. string.rep('0', #c - i)
    end
    redis.call('SET', KEYS[2], s)
  else
    local n = tonumber(c)
    if n and n >= tonumber(s) then
      s = string.format('%.0f', n + 1)
      redis.call('SET', KEYS[2], s)
    end
  end
end
`

// takeScript takes a lock. See takeBody.
var takeScript = newScript(takeBody)

// claimScript is the idempotency Store's Claim: KEYS[3] is the record.
// Returns {record} when a record is stored, else as takeScript.
var claimScript = newScript(`
local r = redis.call('GET', KEYS[3])
if r then
  return {r}
end
` + takeBody)

// refreshScript extends a lock if it still holds the caller's value.
//
// KEYS[1] lock; ARGV[1] value, ARGV[2] TTL in ms. Returns 1 or 0.
var refreshScript = newScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// releaseBody ends a lock if it still holds the caller's value, leaving
// its marker, and announces the release on the lock's channel with
// PUBLISH, which releaseScript and releaseScriptSharded replace.
//
// KEYS[1] lock, KEYS[2] the lease's marker; ARGV[1] value. Returns 1
// (released now or by an earlier run of the lease's release) or 0.
const releaseBody = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], 'released', 'PX', '` + tombstoneMillis + `')
  redis.call('PUBLISH', KEYS[1], 'released')
  return 1
end
if redis.call('GET', KEYS[2]) == 'released' then
  return 1
end
return 0
`

// completeBody is the idempotency Store's Complete: it stores the record
// and ends the lock in one step if the lock still holds the caller's value.
//
// KEYS[1] lock, KEYS[2] record, KEYS[3] the lease's marker; ARGV[1]
// value, ARGV[2] record, ARGV[3] retention in ms. Returns 1 or 0 as
// releaseBody; a lease's release marker does not count as its completion.
const completeBody = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[3], 'completed', 'PX', '` + tombstoneMillis + `')
  redis.call('PUBLISH', KEYS[1], 'completed')
  return 1
end
if redis.call('GET', KEYS[3]) == 'completed' then
  return 1
end
return 0
`

// The release and complete scripts, with PUBLISH for a single node or
// Sentinel, and with SPUBLISH (sharded pub/sub) for Cluster.
var (
	releaseScript         = newScript(releaseBody)
	releaseScriptSharded  = newScript(sharded(releaseBody))
	completeScript        = newScript(completeBody)
	completeScriptSharded = newScript(sharded(completeBody))
)

func sharded(body string) string {
	return strings.Replace(body, "redis.call('PUBLISH'", "redis.call('SPUBLISH'", 1)
}

// script is a Lua script run with EVALSHA, falling back to EVAL when the
// server does not have it cached. It is go-redis's Script.Run, but with the
// command's arguments built by the caller in one slice (see run).
type script struct {
	src string
	sha any // the hex SHA-1 of src, as the command argument
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{src: src, sha: hex.EncodeToString(sum[:])}
}

// run runs the script. args must have room for the command name, the
// script and the number of keys in args[0:3], followed by the keys and then
// the arguments; run fills in args[0:2] (args[2] is the caller's).
func (s *script) run(ctx context.Context, c redis.UniversalClient, args []any) *redis.Cmd {
	args[0], args[1] = "evalsha", s.sha
	cmd := redis.NewCmd(ctx, args...)
	cmd.SetFirstKeyPos(3)
	_ = c.Process(ctx, cmd)
	if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		args = append([]any{"eval", s.src}, args[2:]...)
		cmd = redis.NewCmd(ctx, args...)
		cmd.SetFirstKeyPos(3)
		_ = c.Process(ctx, cmd)
	}
	return cmd
}

// Run runs the script with keys and args, for tests.
func (s *script) Run(ctx context.Context, c redis.UniversalClient, keys []string, args ...any) *redis.Cmd {
	all := make([]any, 3, 3+len(keys)+len(args))
	all[2] = len(keys)
	for _, k := range keys {
		all = append(all, k)
	}
	return s.run(ctx, c, append(all, args...))
}
