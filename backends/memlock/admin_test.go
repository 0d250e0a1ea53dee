package memlock

import (
	"errors"
	"testing"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
	"github.com/idemlock/lock/internal/testenv"
)

// memlock imports no idempotency (whose own tests import memlock), so the
// check that *Locker is a FingerprintClaimer lives here.
var _ idempotency.FingerprintClaimer = (*Locker)(nil)

func TestPingAfterClose(t *testing.T) {
	l := New()
	if err := lock.Ping(t.Context(), l); err != nil {
		t.Fatalf("Ping of a new Locker: %v", err)
	}
	_ = l.Close()
	if err := lock.Ping(t.Context(), l); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close: %v, want ErrClosed", err)
	}
}

// Issue 21.4: a lease forced out is lost at that moment (the lease is a
// lock.LossNotifier), not at KeepAlive's next refresh.
func TestLossDetection(t *testing.T) {
	testenv.LossDetection(t, New(), "k", lock.DefaultTTL, conformance.SchedulingSlack)
}
