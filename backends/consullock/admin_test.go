package consullock_test

import (
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
)

// Issue 21.9: lock.Open makes no request, so a readiness probe needs Ping,
// and Ping must fail for an agent that is not there.
func TestPingUnreachable(t *testing.T) {
	live, _ := newLocker(t)
	testenv.CheckPing(t, "consul://127.0.0.1:1", live, lock.ErrClosed)
}

// Issue 21.6: the min_ttl URL option is what TTLLimits reports.
func TestTTLLimitsFromURL(t *testing.T) {
	b, err := lock.Open(t.Context(), "consul://127.0.0.1:1?min_ttl=3s")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := lock.CheckTTL(b, 2*time.Second); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Fatalf("CheckTTL(2s) with min_ttl=3s: %v, want ErrInvalidTTL", err)
	}
	if err := lock.CheckTTL(b, 3*time.Second); err != nil {
		t.Fatalf("CheckTTL(3s) with min_ttl=3s: %v", err)
	}
}

// Issue 21.4: a lease's Lost channel (a blocking query on its key) closes
// when the key is deleted, so a holder learns of a ForceRelease within one
// blocking-query return, not at its next refresh.
func TestLossDetection(t *testing.T) {
	l, _ := newLocker(t)
	testenv.LossDetection(t, l, t.Name(), lock.DefaultTTL, conformance.SchedulingSlack)
}
