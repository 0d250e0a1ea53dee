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

// TestPoolAfterServerStall stalls a private agent (SIGSTOP) for longer than
// the TTL of the Locker's idle sessions but less than twice it, so that
// Consul, whose timers fire at twice the TTL, still knows them. By
// Consul's session contract such a session may be invalidated at any
// moment once its TTL has run out since its last renewal, even just after
// a renewal that succeeded (when the server resumes, the timers that fell
// due run together with the renewals it accepted). The pool must destroy
// its idle sessions from before the stall and take with new ones, never
// renew and hand them out. Regression test: before the fix the keeper
// renewed them on resume and the next takes got them.
func TestPoolAfterServerStall(t *testing.T) {
	agent := testenv.Private(t, testenv.Consul)
	noLeaks(t)
	client, _ := newClientAt(t, agent.Addr())
	l, c := newLockerAt(t, agent.Addr())
	const ttl = 2 * time.Second
	burst(t, l, 3, ttl)
	before := map[string]bool{}
	for _, s := range sessions(t, client, sessionName(t)) {
		before[s.ID] = true
	}
	if len(before) < 3 {
		t.Fatalf("%d sessions before the stall, want the 3 pooled ones at least", len(before))
	}
	agent.Pause(t)
	time.Sleep(ttl + ttl/4) // the fault's length: past the TTL, short of Consul's 2×TTL timers
	agent.Resume(t)
	resumed := time.Now()
	renews := c.snapshot()["session/renew"]
	k := key(t, "k")
	n := 0
	// For a second after the resume and at least until the keeper renewed
	// a session again: before the fix it renewed the pre-stall ones then.
	for time.Since(resumed) < time.Second || c.snapshot()["session/renew"] == renews {
		le := take(t, l, k, ttl)
		n++
		if h := holder(t, client, k); before[h] {
			t.Fatalf("take %d after the stall got session %s, idle since before the stall", n, h)
		}
		release(t, le)
		if time.Since(resumed) > 10*time.Second {
			t.Fatalf("no session renewed 10s after the stall")
		}
	}
	t.Logf("%d takes after the stall, none on a pre-stall session", n)
}
