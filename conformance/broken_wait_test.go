package conformance_test

import (
	"errors"

	"github.com/idemlock/lock"
)

// takeWaits is the flaw of a take that, once its client was refused a key
// twice, waits on the server for the key's release instead of answering,
// deaf to its context (a blocking server call posing as TryAcquire). Its
// clients poll (they are no Notifier), so that a waiter's attempt is in
// flight when the holder is about to release: WokenWaiterGivesUp must fail
// the clause, not wait for that attempt until the test binary times out.
const takeWaits = "take-waits-for-release"

func init() { flaws[takeWaits] = "WokenWaiterGivesUp" }

// pollingClient is a brokenClient without its Notifier.
type pollingClient struct{ lock.Locker }

// waitTurn is the takeWaits flaw, for a take of key by c that finds key
// held; s.mu is held. A client refused twice waits for the key's release
// (or the server's end), and then takes it if free (true). Otherwise the
// take is answered once every client refused twice before is waiting (so,
// when the last waiter starts waiting, every earlier one has an attempt in
// flight), and a refusal is counted.
func (s *brokenServer) waitTurn(c *brokenClient, key string) bool {
	if c.refusals[key] >= 2 {
		s.blocked[key]++
		s.cond.Broadcast()
		for s.holder(key) != nil && !s.closed {
			s.cond.Wait() // a release broadcasts; expiry does not
		}
		s.blocked[key]--
		return !s.closed
	}
	for s.blocked[key] < s.twice[key] && !s.closed {
		s.cond.Wait()
	}
	if s.holder(key) != nil { // refused: counted
		if c.refusals[key]++; c.refusals[key] == 2 {
			s.twice[key]++
		}
	}
	return false
}

// errClosed answers the takes waiting when the server closes.
var errClosed = errors.New("broken server: closed")
