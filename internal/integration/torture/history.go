package torture

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/idemlock/lock"
)

// Kind is the kind of a recorded lock operation.
type Kind uint8

// The operations of the lock contract that a history records.
const (
	Take    Kind = iota + 1 // one TryAcquire
	Refresh                 // Lease.Refresh
	Release                 // Lease.Release
)

// String names the operation.
func (k Kind) String() string {
	switch k {
	case Take:
		return "take"
	case Refresh:
		return "refresh"
	case Release:
		return "release"
	}
	return "?"
}

// Outcome is how an operation ended, seen from its caller: done, refused, or
// unknown (an error that leaves open whether the server applied it).
type Outcome uint8

// The three outcomes of an operation across the network.
const (
	OK      Outcome = iota + 1 // nil error
	Refused                    // ErrNotAcquired (take) or ErrNotHeld (refresh, release)
	Unknown                    // any other error: timeout, reset, lost reply
)

// String names the outcome.
func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case Refused:
		return "refused"
	case Unknown:
		return "unknown"
	}
	return "?"
}

// outcomeOf classifies an error of a lock operation of kind k.
func outcomeOf(k Kind, err error) Outcome {
	switch {
	case err == nil:
		return OK
	case k == Take && errors.Is(err, lock.ErrNotAcquired):
		return Refused
	case k != Take && errors.Is(err, lock.ErrNotHeld):
		return Refused
	}
	return Unknown
}

// Op is one lock operation as its caller saw it. Times are nanoseconds of
// the run's [Clock].
type Op struct {
	Kind    Kind
	Key     int    // index of the key
	Lease   uint64 // the lease it acts on; for a take, the lease it made (0 if none)
	Token   uint64 // the token of a successful take
	Worker  int    // the worker that called it
	Call    int64
	Return  int64
	Outcome Outcome
	Err     string // the error, for examples
	// Queued marks a take by a queued waiter's ticket (lock.Ticket), which
	// is also refused while the key is free and another waiter is ahead.
	Queued bool
}

// TakeRecord is one holding of a key by a worker: from its Acquire to its
// release, with the moments the checkers need.
type TakeRecord struct {
	Lease  uint64
	Key    int
	Worker int
	Proc   int // 0: the coordinator's process, else a worker process
	Token  uint64
	Invoke int64 // Acquire called
	Taken  int64 // Acquire returned the lease
	// Done is when the KeepAlive context ended, for whatever reason; Lost
	// is that moment if the reason was the loss of the lease (else 0), and
	// LostCause the reason.
	Done      int64
	Lost      int64
	LostCause string
	// Exit is when the worker left the critical section: it stopped
	// writing, having finished or seen its context end.
	Exit    int64
	Writes  int // writes the resource accepted
	Fenced  int // writes the resource rejected as stale
	Stalled bool
	// Release is the outcome of the release that ended the take.
	Release Outcome
}

// End is when the take stopped holding as far as its worker could tell: it
// left the critical section or its context ended.
func (t *TakeRecord) End() int64 {
	if t.Done != 0 && t.Done < t.Exit {
		return t.Done
	}
	return t.Exit
}

// recorder collects the operations of one worker's Locker.
type recorder struct {
	clock  *Clock
	worker int
	key    func(string) int
	mu     sync.Mutex
	ops    []Op
	leases uint64 // the worker's lease counter
}

// newLeaseID returns an identifier unique in the run: the worker's number
// in the high half, a counter in the low one.
func (r *recorder) newLeaseID() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leases++
	return uint64(r.worker+1)<<32 | r.leases
}

func (r *recorder) add(op Op) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

func (r *recorder) drain() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops := r.ops
	r.ops = nil
	return ops
}

func (r *recorder) record(k Kind, key int, lease, token uint64, call int64, err error) {
	r.recordOp(Op{Kind: k, Key: key, Lease: lease, Token: token, Call: call}, err)
}

// recordOp completes op (its worker, return time and outcome) and records it.
func (r *recorder) recordOp(op Op, err error) {
	op.Worker, op.Return, op.Outcome = r.worker, r.clock.Now(), outcomeOf(op.Kind, err)
	if err != nil {
		op.Err = err.Error()
		if len(op.Err) > 300 {
			op.Err = op.Err[:300] + "…"
		}
	}
	r.add(op)
}

// recordingLocker records every TryAcquire of the Locker it wraps, and
// every Refresh and Release of the leases it returns. It keeps the
// optional interfaces the lock helpers look for.
type recordingLocker struct {
	inner lock.Locker
	rec   *recorder
}

// recordingNotifier is a recordingLocker whose Locker is a lock.Notifier.
type recordingNotifier struct {
	recordingLocker
	lock.Notifier
}

// recordingQueuer is a recordingNotifier whose Locker is a lock.Queuer
// too (it may have queued waiting off: its Queue then says so, and
// lock.Acquire waits unqueued); the takes of its tickets are recorded.
type recordingQueuer struct {
	recordingNotifier
	q lock.Queuer
}

func record(l lock.Locker, rec *recorder) lock.Locker {
	rl := recordingLocker{inner: l, rec: rec}
	n, notifies := l.(lock.Notifier)
	q, queues := l.(lock.Queuer)
	switch {
	case notifies && queues:
		return &recordingQueuer{recordingNotifier{rl, n}, q}
	case notifies:
		return &recordingNotifier{rl, n}
	}
	return &rl
}

func (l *recordingLocker) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	return l.take(key, false, func() (lock.Lease, error) { return l.inner.TryAcquire(ctx, key, ttl) })
}

// take records one take of key, made by try.
func (l *recordingLocker) take(key string, queued bool, try func() (lock.Lease, error)) (lock.Lease, error) {
	k := l.rec.key(key)
	call := l.rec.clock.Now()
	le, err := try()
	if err != nil {
		l.rec.recordOp(Op{Kind: Take, Key: k, Call: call, Queued: queued}, err)
		return nil, err
	}
	rl := &recordingLease{inner: le, rec: l.rec, key: k, id: l.rec.newLeaseID()}
	l.rec.recordOp(Op{Kind: Take, Key: k, Lease: rl.id, Token: le.Token(), Call: call, Queued: queued}, nil)
	return wrapLease(rl), nil
}

// Queue returns the Locker's ticket for key, recording its takes.
func (l *recordingQueuer) Queue(ctx context.Context, key string) (lock.Ticket, error) {
	t, err := l.q.Queue(ctx, key)
	if err != nil {
		return nil, err
	}
	return &recordingTicket{Ticket: t, l: &l.recordingLocker, key: key}, nil
}

// recordingTicket records the takes of a queued waiter's ticket.
type recordingTicket struct {
	lock.Ticket
	l   *recordingLocker
	key string
}

func (t *recordingTicket) TryAcquire(ctx context.Context, ttl time.Duration) (lock.Lease, error) {
	return t.l.take(t.key, true, func() (lock.Lease, error) { return t.Ticket.TryAcquire(ctx, ttl) })
}

// recordingLease records the calls on one lease.
type recordingLease struct {
	inner lock.Lease
	rec   *recorder
	key   int
	id    uint64
}

func (l *recordingLease) Key() string   { return l.inner.Key() }
func (l *recordingLease) Token() uint64 { return l.inner.Token() }

func (l *recordingLease) Refresh(ctx context.Context, ttl time.Duration) error {
	call := l.rec.clock.Now()
	err := l.inner.Refresh(ctx, ttl)
	l.rec.record(Refresh, l.key, l.id, 0, call, err)
	return err
}

func (l *recordingLease) Release(ctx context.Context) error {
	call := l.rec.clock.Now()
	err := l.inner.Release(ctx)
	l.rec.record(Release, l.key, l.id, 0, call, err)
	return err
}

func (l *recordingLease) base() *recordingLease { return l }

// The four combinations of the optional lease interfaces.
type (
	leaseD  struct{ *recordingLease }
	leaseL  struct{ *recordingLease }
	leaseDL struct{ *recordingLease }
)

func (l leaseD) Deadline() time.Time    { return l.inner.(lock.Deadliner).Deadline() }
func (l leaseDL) Deadline() time.Time   { return l.inner.(lock.Deadliner).Deadline() }
func (l leaseL) Lost() <-chan struct{}  { return l.inner.(lock.LossNotifier).Lost() }
func (l leaseDL) Lost() <-chan struct{} { return l.inner.(lock.LossNotifier).Lost() }
func wrapLease(l *recordingLease) lock.Lease {
	_, d := l.inner.(lock.Deadliner)
	_, n := l.inner.(lock.LossNotifier)
	switch {
	case d && n:
		return leaseDL{l}
	case d:
		return leaseD{l}
	case n:
		return leaseL{l}
	}
	return l
}

// leaseID returns the identifier of a lease made by a recordingLocker.
func leaseID(le lock.Lease) uint64 {
	if b, ok := le.(interface{ base() *recordingLease }); ok {
		return b.base().id
	}
	return 0
}
