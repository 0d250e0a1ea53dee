package testenv

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
)

// CheckPing checks a backend's lock.Ping (issue 21.9): lock.Open of
// unreachable, a URL of the backend's scheme on a port nothing listens on,
// succeeds (Open does not connect) and Ping then fails within five seconds;
// Ping of live, a Backend on the test server, succeeds; and after live is
// closed Ping fails with an error matching closed (unless closed is nil:
// the backend keeps working after Close).
func CheckPing(t *testing.T, unreachable string, live lock.Backend, closed error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	b, err := lock.Open(ctx, unreachable)
	if err != nil {
		t.Fatalf("Open(%q): %v", unreachable, err)
	}
	if err := lock.Ping(ctx, b); err == nil {
		t.Errorf("Ping of a Backend on a port nothing listens on (%s) succeeded", unreachable)
	}
	_ = b.Close()
	ctx = t.Context()
	if err := lock.Ping(ctx, live); err != nil {
		t.Fatalf("Ping of the test server: %v", err)
	}
	if closed == nil {
		return
	}
	_ = live.Close()
	if err := lock.Ping(ctx, live); !errors.Is(err, closed) {
		t.Fatalf("Ping after Close: %v, want an error matching %v", err, closed)
	}
}
