package redislock

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

var _ driver.FullBackend = (*Locker)(nil)

// Ping sends one PING with ctx (in Cluster, to one node go-redis picks) and
// returns nil if the server answered. After [Locker.Close] of a Locker
// made by lock.Open, whose client Close closed, it fails.
func (l *Locker) Ping(ctx context.Context) error {
	if err := l.gate.CheckContext(ctx, "ping"); err != nil {
		return err
	}
	if err := l.client.Ping(ctx).Err(); err != nil {
		return errs.OpError("ping", "", err)
	}
	return nil
}

// TTLLimits reports Redis's limits: TTLs are counted in whole milliseconds
// (PX), with no minimum and no maximum a time.Duration can reach.
func (l *Locker) TTLLimits() lock.TTLLimits { return lock.TTLLimits{Step: time.Millisecond} }

// fingerprintSep separates the nonce from the base64url fingerprint in a
// lock's value "<token>:<nonce>[:<fingerprint>]": the nonce is base 36, so
// it never holds the separator.
const fingerprintSep = ":"

// fingerprintOf returns the fingerprint a holder's nonce carries, or nil.
func fingerprintOf(nonce string) []byte {
	_, enc, ok := strings.Cut(nonce, fingerprintSep)
	if !ok {
		return nil
	}
	fp, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return nil
	}
	return fp
}

// ClaimFingerprint is [Locker.Claim] that also keeps fp (at most 64 bytes)
// in the lock's value, written by the same script as the lease; a claim
// refused because another claim holds the key gets that claim's fp as
// holder. It makes *Locker an idempotency.FingerprintClaimer.
func (l *Locker) ClaimFingerprint(ctx context.Context, key string, ttl time.Duration, fp []byte) (lock.Lease, []byte, []byte, error) {
	if err := l.gate.CheckClaim(ctx, key, ttl, fp); err != nil {
		return nil, nil, nil, err
	}
	le, rec, holder, err := l.take(ctx, claimScript, key, ttl, true, fp)
	return driver.LeaseOf(le), rec, holder, err
}

// inspectScript reads a lock and its record in one step.
//
// KEYS[1] lock, KEYS[2] record. Returns {value (empty when free), PTTL of the lock,
// length of the record, PTTL of the record (-2 when there is none)}.
var inspectScript = newScript(`
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v) == 114 then
  v = ''
end
return {v, redis.call('PTTL', KEYS[1]), redis.call('STRLEN', KEYS[2]), redis.call('PTTL', KEYS[2])}
`)

// forceReleaseBody deletes a lock whoever holds it, and announces the
// release as releaseBody does. The fencing counter is a key of its own,
// so tokens keep increasing.
//
// KEYS[1] lock. Returns 1, or 0 when no lease held the lock.
const forceReleaseBody = `
local v = redis.call('GET', KEYS[1])
if v and string.byte(v) ~= 114 then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1], 'released')
  return 1
end
return 0
`

var (
	forceReleaseScript        = newScript(forceReleaseBody)
	forceReleaseScriptSharded = newScript(sharded(forceReleaseBody))
)

// Inspect reads the lock and the record of key in one script. It makes
// *Locker a lock.Admin: key is the caller's key, escaped or hashed here as
// the leases do.
func (l *Locker) Inspect(ctx context.Context, key string) (lock.KeyInfo, error) {
	if err := l.gate.CheckKey(ctx, "inspect", key); err != nil {
		return lock.KeyInfo{}, err
	}
	k := l.keysFor(key)
	v, err := inspectScript.Run(ctx, l.client, []string{k.lock, k.record()}).Slice()
	if err != nil {
		return lock.KeyInfo{}, errs.OpError("inspect", key, err)
	}
	info := lock.KeyInfo{Key: key}
	if len(v) != 4 {
		return info, errs.OpError("inspect", key, fmt.Errorf("unexpected script reply %v", v))
	}
	if val, _ := v[0].(string); val != "" {
		info.Held = true
		tok, _, _ := strings.Cut(val, ":")
		info.Token, _ = parseToken(tok)
		if pttl, _ := v[1].(int64); pttl > 0 {
			info.Remaining = time.Duration(pttl) * time.Millisecond
		}
	}
	if pttl, _ := v[3].(int64); pttl != -2 {
		info.Record = true
		n, _ := v[2].(int64)
		info.RecordSize = int(n)
		if pttl > 0 {
			info.RecordRemaining = time.Duration(pttl) * time.Millisecond
		}
	}
	return info, nil
}

// ForceRelease deletes the lock of key, whoever holds it, and wakes its
// waiters, in one script. The holder's next Refresh, Release or Complete
// reports lock.ErrNotHeld; a KeepAlive learns of it at its next refresh
// (within a third of the TTL by default). It returns an error matching
// lock.ErrNotHeld if no lease held key.
func (l *Locker) ForceRelease(ctx context.Context, key string) error {
	if err := l.gate.CheckKey(ctx, "force release", key); err != nil {
		return err
	}
	s := forceReleaseScript
	if l.cluster != nil {
		s = forceReleaseScriptSharded
	}
	n, err := s.Run(ctx, l.client, []string{l.keysFor(key).lock}).Int64()
	return errs.Found("force release", key, n == 1, err)
}

// DeleteRecord deletes the idempotency record of key (one DEL), so that the
// next Claim takes the key. It returns an error matching lock.ErrNotHeld if
// no record was stored.
func (l *Locker) DeleteRecord(ctx context.Context, key string) error {
	if err := l.gate.CheckKey(ctx, "delete record", key); err != nil {
		return err
	}
	n, err := l.client.Del(ctx, l.keysFor(key).record()).Result()
	return errs.Found("delete record", key, n > 0, err)
}
