package consullock_test

import (
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/internal/testenv"
)

// TestAgentRestart restarts a dev agent of its own, which comes back
// empty: every lease must then report the loss truthfully, and the Locker
// must work again without being told.
func TestAgentRestart(t *testing.T) {
	agent := testenv.Private(t, testenv.Consul)
	noLeaks(t)
	l, _ := newLockerAt(t, agent.Addr())
	kept, plain, done := key(t, "kept"), key(t, "plain"), key(t, "done")
	le1 := take(t, l, kept, 3*time.Second)
	kp, err := lock.KeepAlive(t.Context(), le1, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer kp.Stop()
	le2 := take(t, l, plain, 10*time.Second)
	lost := le2.(lock.LossNotifier).Lost()
	if err := l.Complete(t.Context(), claim(t, l, done), []byte("r"), time.Minute); err != nil {
		t.Fatal(err)
	}

	restarted := time.Now()
	agent.Restart(t)
	t.Logf("the agent answered again %v after the restart began", time.Since(restarted))

	for name, ch := range map[string]<-chan struct{}{"KeepAlive's context": kp.Context().Done(), "Lost": lost} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s not ended 10s after the agent came back empty", name)
		}
	}
	if !kp.Lost() {
		t.Errorf("KeepAlive ended with %v, want a lost lease", kp.Err())
	}
	if err := le2.Refresh(t.Context(), 10*time.Second); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh after the restart: %v, want ErrNotHeld", err)
	}
	if err := le2.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Release after the restart: %v, want ErrNotHeld", err)
	}
	if err := kp.Release(t.Context()); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Keeper.Release after the restart: %v, want ErrNotHeld", err)
	}
	// The Locker's pooled sessions died with the agent's state; it finds
	// out and takes with new ones.
	release(t, take(t, l, kept, 3*time.Second))
	// A dev agent keeps nothing, records included.
	release(t, claim(t, l, done))
}
