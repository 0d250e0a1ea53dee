package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemlock/lock"
)

// State is where a lease is in its life, as far as this process knows.
type State int32

const (
	// Held: the lease holds its key as far as this process knows (it may
	// have expired on the server since).
	Held State = iota
	// Releasing: a Release or Complete is in flight. The lease may still
	// hold its key: if the call's outcome is unknown, the lease goes back
	// to Held, so Refresh still asks the server.
	Releasing
	// Released: the lease's own Release or Complete ended it, or found it
	// no longer held. Final.
	Released
	// Lost: a call found that the lease no longer holds its key (it
	// expired, or was taken or forced out). A later Release or Complete
	// may still find evidence of its own earlier success, and then the
	// lease becomes Released.
	Lost
)

func (s State) String() string {
	switch s {
	case Held:
		return "held"
	case Releasing:
		return "releasing"
	case Released:
		return "released"
	case Lost:
		return "lost"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// Lease is the part of a lease that every backend has: key, fencing token,
// state, the local monotonic deadline and the serialisation of ending
// calls. Embed it in the backend's lease type and call [Lease.Init] before
// the lease is handed out; Key, Token and Deadline (which makes the lease a
// [lock.Deadliner]) then come from it:
//
//	type lease struct {
//		driver.Lease
//		value string // what the server stores for this lease
//	}
//
// A Lease must not be copied after Init. Its methods are safe for
// concurrent use.
type Lease struct {
	gate  *Gate
	key   string
	token uint64
	state atomic.Int32

	mu       sync.Mutex
	sent     time.Time     // when the request behind deadline was sent
	deadline time.Time     // sent plus the TTL it was granted
	turn     chan struct{} // made by the first Serial; one token: the turn
}

// Init sets the lease's Locker (by its Gate), key, fencing token and
// deadline: sent, the local time the take was sent (time.Now() taken just
// before the request, so that it carries the monotonic clock), plus ttl,
// the TTL the server granted. The state is Held. A backend that needs the
// lease before it knows the token (to give a half-made take back) may call
// Init again, with the token, until the lease is handed out.
func (b *Lease) Init(g *Gate, key string, token uint64, sent time.Time, ttl time.Duration) {
	b.gate, b.key, b.token = g, key, token
	b.sent, b.deadline = sent, sent.Add(ttl)
}

// driverLease makes every type that embeds Lease a [Leaser].
//
//lint:ignore U1000 called by Own through the Leaser constraint
func (b *Lease) driverLease() *Lease { return b }

// Key returns the key as it was passed to TryAcquire.
func (b *Lease) Key() string { return b.key }

// Token returns the lease's fencing token.
func (b *Lease) Token() uint64 { return b.token }

// Deadline returns the local time the latest successful take or refresh
// was sent plus its TTL: a lower bound of the server's expiry, read on the
// monotonic clock. It makes the lease a [lock.Deadliner].
func (b *Lease) Deadline() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.deadline
}

// Extend records a successful refresh that was sent at sent (time.Now()
// taken just before the request) and granted ttl. The deadline follows the
// latest-sent successful request: the reply of a request sent earlier,
// arriving after a later one's, never moves it back. A later request with
// a shorter TTL does shorten it, as it shortened the server's expiry.
func (b *Lease) Extend(sent time.Time, ttl time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if sent.Before(b.sent) {
		return
	}
	b.sent, b.deadline = sent, sent.Add(ttl)
}

// State returns the lease's state.
func (b *Lease) State() State { return State(b.state.Load()) }

// Lose records that a call found the lease no longer holding its key:
// Held or Releasing become Lost. It reports whether the state changed
// (false when the lease was already Lost or Released).
func (b *Lease) Lose() bool {
	for {
		s := b.state.Load()
		if s != int32(Held) && s != int32(Releasing) {
			return false
		}
		if b.state.CompareAndSwap(s, int32(Lost)) {
			return true
		}
	}
}

// Check returns an error matching [lock.ErrNotHeld] (naming op) once the
// lease is Released or Lost, and nil while it is Held or Releasing (a
// Release whose outcome is not known yet has not ended the lease).
func (b *Lease) Check(op string) error {
	switch b.State() {
	case Released, Lost:
		return b.NotHeld(op)
	}
	return nil
}

// NotHeld is the backend's NotHeld error for op on this lease's key.
func (b *Lease) NotHeld(op string) error { return b.gate.Name.NotHeld(op, b.key) }

// NotHeldWhy is the backend's NotHeldWhy error for op on this lease's key.
func (b *Lease) NotHeldWhy(op, why string) error { return b.gate.Name.NotHeldWhy(op, b.key, why) }

// OpError is the backend's OpError for op on this lease's key.
func (b *Lease) OpError(op string, err error) error { return b.gate.Name.OpError(op, b.key, err) }

// Serial runs fn while no other Serial or End call on this lease runs: a
// second call waits for the first to return, or for ctx to end (then it
// returns ctx's error and fn does not run). A nil or ended ctx is refused
// first, as [lock.CheckContext] does, so a lease method that starts with
// Serial or End need not check it.
func (b *Lease) Serial(ctx context.Context, fn func() error) error {
	if err := lock.CheckContext(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	if b.turn == nil {
		b.turn = make(chan struct{}, 1)
	}
	turn := b.turn
	b.mu.Unlock()
	select {
	case turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-turn }()
	return fn()
}

// End runs fn, the request of an ending call (Release or Complete; op
// names it), under [Lease.Serial], so that a second ending call waits for
// the first one's outcome instead of guessing it. If the lease is already
// Released it returns the NotHeld error at once. Otherwise a Held lease is
// Releasing while fn runs, and fn's outcome settles the state: Released
// when fn returned nil or an error matching [lock.ErrNotHeld] (the lease
// ended either way), unchanged after any other error (the outcome is
// unknown: the lease goes back to Held, and a retry asks the server). A
// Lost lease still runs fn, which may find evidence of an earlier success.
func (b *Lease) End(ctx context.Context, op string, fn func() error) error {
	return b.Serial(ctx, func() error {
		if b.State() == Released {
			return b.NotHeld(op)
		}
		b.state.CompareAndSwap(int32(Held), int32(Releasing))
		err := fn()
		if err == nil || errors.Is(err, lock.ErrNotHeld) {
			b.state.Store(int32(Released))
		} else {
			b.state.CompareAndSwap(int32(Releasing), int32(Held))
		}
		return err
	})
}
