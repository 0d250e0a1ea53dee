package lock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

func TestValidateKey(t *testing.T) {
	valid := []string{"a", " ", "a b", "\x00", "日本", strings.Repeat("k", lock.MaxKeyLen)}
	for _, k := range valid {
		if err := lock.ValidateKey(k); err != nil {
			t.Errorf("ValidateKey(%q) = %v, want nil", k, err)
		}
	}
	invalid := []string{"", strings.Repeat("k", lock.MaxKeyLen+1), "\xff"}
	for _, k := range invalid {
		err := lock.ValidateKey(k)
		var ke *lock.KeyError
		if !errors.Is(err, lock.ErrInvalidKey) || !errors.As(err, &ke) {
			t.Errorf("ValidateKey(%.20q) = %v, want a *KeyError matching ErrInvalidKey", k, err)
		}
		if ke != nil && len(ke.Key) > 100 {
			t.Errorf("KeyError.Key holds %d bytes; long keys must be shortened for messages", len(ke.Key))
		}
	}
}

func TestValidateTTL(t *testing.T) {
	for _, ttl := range []time.Duration{0, -1, -time.Hour} {
		err := lock.ValidateTTL(ttl)
		var te *lock.TTLError
		if !errors.Is(err, lock.ErrInvalidTTL) || !errors.As(err, &te) || te.TTL != ttl {
			t.Errorf("ValidateTTL(%v) = %v, want a *TTLError matching ErrInvalidTTL", ttl, err)
		}
	}
	if err := lock.ValidateTTL(time.Nanosecond); err != nil {
		t.Errorf("ValidateTTL(1ns) = %v, want nil", err)
	}
}

func TestCheckArgs(t *testing.T) {
	//lint:ignore SA1012 a nil context is the bad input under test
	if err := lock.CheckArgs(nil, "k", time.Second); !errors.Is(err, lock.ErrInvalidArgument) { //nolint:staticcheck
		t.Errorf("CheckArgs(nil ctx) = %v, want ErrInvalidArgument", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := lock.CheckArgs(ctx, "k", time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("CheckArgs(cancelled ctx) = %v, want context.Canceled", err)
	}
	if err := lock.CheckArgs(context.Background(), "", time.Second); !errors.Is(err, lock.ErrInvalidKey) {
		t.Errorf("CheckArgs(empty key) = %v, want ErrInvalidKey", err)
	}
	if err := lock.CheckArgs(context.Background(), "k", 0); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("CheckArgs(0 TTL) = %v, want ErrInvalidTTL", err)
	}
}

func TestCheckRefresh(t *testing.T) {
	if err := lock.CheckRefresh(context.Background(), 0); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("CheckRefresh(0 TTL) = %v, want ErrInvalidTTL", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := lock.CheckRefresh(ctx, time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("CheckRefresh(cancelled ctx) = %v, want context.Canceled", err)
	}
	if err := lock.CheckRefresh(context.Background(), time.Second); err != nil {
		t.Errorf("CheckRefresh(valid) = %v, want nil", err)
	}
}

func TestNotAcquiredError(t *testing.T) {
	var err error = &lock.NotAcquiredError{Key: "k", Remaining: time.Second}
	if !errors.Is(err, lock.ErrNotAcquired) {
		t.Fatalf("NotAcquiredError does not match ErrNotAcquired")
	}
	if !strings.Contains(err.Error(), `"k"`) {
		t.Errorf("message %q does not name the key", err)
	}
}
