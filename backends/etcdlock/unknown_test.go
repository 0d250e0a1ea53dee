package etcdlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/etcdlock"
	"github.com/idemlock/lock/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// faultMethods are the gRPC methods whose requests decide a lock
// operation's outcome: the transactions of take, release, refresh moves and
// Complete, and the lease renewal of a same-TTL Refresh. Lease grants and
// revokes are left alone: clientv3 retries them after a dropped connection
// (they are repeatable), so a reply lost there is no unknown outcome; and
// watches (waiting) carry no lock operation.
var faultMethods = map[string]bool{
	"/etcdserverpb.KV/Txn":               true,
	"/etcdserverpb.Lease/LeaseKeepAlive": true,
}

// background reports whether the calling goroutine is the Locker's own
// background work (the lease pool's refills and revokes, Close, the queue
// lease's grant and keep-alive stream), whose
// requests belong to no lock operation.
func background() bool {
	return testenv.OnStack("etcdlock.(*pool).work", "etcdlock.(*pool).close", "etcdlock.(*Locker).Close", "etcdlock.(*Locker).queueLease")
}

// errLostReply is what gRPC returns when the connection drops after the
// request was sent.
var errLostReply = status.Error(codes.Unavailable, "injected fault: reply lost after the server applied the request")

// faultDialOptions carry out the faults of a testenv.FaultSwitch on the
// lock operations' requests. A lost reply invokes the call and then
// returns Unavailable, as gRPC does when the connection drops after the
// request was sent; on a lease renewal stream, which clientv3 retries
// forever on Unavailable, it returns DeadlineExceeded, as when the reply
// never came in time. A stall does not send the request and blocks until
// the call's context ends, returning the status gRPC would.
func faultDialOptions(faults *testenv.FaultSwitch) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if !faultMethods[method] || background() {
				return invoker(ctx, method, req, reply, cc, opts...)
			}
			switch f := faults.Take(); f {
			case testenv.LoseReply:
				if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
					faults.Rearm(f) // not applied: the fault waits for the next
					return err
				}
				return errLostReply
			case testenv.Stall:
				return stallStatus(faults.Stall(ctx))
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			if !faultMethods[method] || background() {
				return streamer(ctx, desc, cc, method, opts...)
			}
			f := faults.Take()
			s, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				faults.Rearm(f)
				return nil, err
			}
			if f == testenv.NoFault {
				return s, nil
			}
			return &faultStream{ClientStream: s, ctx: ctx, faults: faults, fault: f}, nil
		}),
	}
}

// stallStatus turns the end of a stall into the status gRPC returns.
func stallStatus(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Unavailable, err.Error())
}

// faultStream carries out one fault on a lease renewal stream.
type faultStream struct {
	grpc.ClientStream
	ctx    context.Context
	faults *testenv.FaultSwitch
	fault  testenv.Fault
}

func (s *faultStream) SendMsg(m any) error {
	if s.fault == testenv.Stall {
		return nil // a hung server: it never sees the request
	}
	return s.ClientStream.SendMsg(m)
}

func (s *faultStream) RecvMsg(m any) error {
	switch s.fault {
	case testenv.LoseReply:
		if err := s.ClientStream.RecvMsg(m); err != nil {
			return err
		}
		return status.Error(codes.DeadlineExceeded, "injected fault: reply lost after the server applied the request")
	case testenv.Stall:
		return stallStatus(s.faults.Stall(s.ctx))
	}
	return s.ClientStream.RecvMsg(m)
}

// newFaultyLocker is conformance.Config.NewFaultyLocker: an independent
// Locker whose client carries out the faults armed on the returned switch.
func newFaultyLocker(t *testing.T, opts ...etcdlock.Option) (*etcdlock.Locker, *testenv.FaultSwitch) {
	t.Helper()
	faults := testenv.NewFaultSwitch(t)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   testenv.EtcdEndpoints(t),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: faultDialOptions(faults),
	})
	if err != nil {
		t.Fatalf("clientv3.New: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	l := mustNew(t, cli, opts...)
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Locker.Close: %v", err)
		}
	})
	return l, faults
}

// A Release whose reply was lost went through; another Locker takes the
// key. The old lease must then report ErrNotHeld on Refresh (same TTL,
// whose fast path renews only its own etcd lease, which still lives), and
// a KeepAlive on it must end. Regression test of issue 13, finding 1 (the
// Refresh succeeded three times and KeepAlive's context stayed alive).
func TestRefreshAfterLostRelease(t *testing.T) {
	prefix := testPrefix(t)
	a, faults := newFaultyLocker(t, etcdlock.WithPrefix(prefix))
	b := newLocker(t, nil, etcdlock.WithPrefix(prefix))
	testenv.LoseReleaseReply(t, a, faults, b, "k", 5*time.Second, false)
}

// The same after a Complete whose reply was lost: the record is stored and
// the key free, and the lease must not report holding it.
func TestRefreshAfterLostComplete(t *testing.T) {
	prefix := testPrefix(t)
	a, faults := newFaultyLocker(t, etcdlock.WithPrefix(prefix))
	ctx := t.Context()
	const ttl = 5 * time.Second
	le, _, err := a.Claim(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	faults.LoseNextReply()
	if err := a.Complete(ctx, le, []byte("done"), time.Minute); err == nil || errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Complete with its reply lost: %v, want an error of unknown outcome", err)
	}
	if err := le.Refresh(ctx, ttl); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh after the lost completion: %v, want ErrNotHeld", err)
	}
}

// A Release that never reached the server (it stalled until its deadline)
// also has an unknown outcome to the lease: the next Refresh checks the key,
// finds it still the lease's own, and keeps it.
func TestRefreshAfterStalledRelease(t *testing.T) {
	prefix := testPrefix(t)
	a, faults := newFaultyLocker(t, etcdlock.WithPrefix(prefix))
	ctx := t.Context()
	const ttl = 5 * time.Second
	le, err := a.TryAcquire(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	faults.StallNextRequest()
	rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = le.Release(rctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Release stalled until its deadline: %v, want context.DeadlineExceeded", err)
	}
	if err := le.Refresh(ctx, ttl); err != nil {
		t.Fatalf("Refresh after a Release that never reached the server: %v, want the lease still held", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// Concurrent calls on one lease never misreport ownership.
func TestConcurrentLeaseCalls(t *testing.T) {
	prefix := testPrefix(t)
	testenv.RaceLeaseCalls(t, newLocker(t, nil, etcdlock.WithPrefix(prefix)), newLocker(t, nil, etcdlock.WithPrefix(prefix)), "k", 5*time.Second, 50)
}
