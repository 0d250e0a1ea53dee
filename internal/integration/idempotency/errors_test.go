package idempotency_test

import (
	"errors"
	"testing"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/backends/memcachedlock"
	"github.com/idemlock/lock/backends/redislock"
	"github.com/idemlock/lock/idempotency"
)

// Item 6: every backend's "record too large" error wraps the one
// sentinel, which matches lock.ErrInvalidArgument.
func TestRecordTooLargeOneSentinel(t *testing.T) {
	for name, err := range map[string]error{
		"redislock":     redislock.ErrRecordTooLarge,
		"etcdlock":      etcdlock.ErrRecordTooLarge,
		"memcachedlock": memcachedlock.ErrRecordTooLarge,
	} {
		if !errors.Is(err, idempotency.ErrRecordTooLarge) || !errors.Is(err, lock.ErrInvalidArgument) {
			t.Errorf("%s: %v does not match idempotency.ErrRecordTooLarge and lock.ErrInvalidArgument", name, err)
		}
	}
}
