package torture

import (
	"context"
	"net"
	"net/rpc"
	"sync"
)

// Write is one write of a critical section to the fenced resource.
type Write struct {
	Key    int
	Token  uint64
	Lease  uint64
	Worker int
	Seq    int // the write's number within its take, from 0
}

// WriteRecord is a write as the resource handled it.
type WriteRecord struct {
	Write
	Order    int   // position in the resource's total order
	At       int64 // when the resource handled it, on the run's clock
	Accepted bool
}

// Resource is the fenced resource the workers write to inside their
// critical sections: a register per key that rejects a write whose token is
// lower than the highest it has accepted, as a storage system protected by
// a lock's fencing tokens does. It keeps every write in the order it handled
// them, for the checkers.
type Resource struct {
	clock *Clock
	mu    sync.Mutex
	high  map[int]uint64 // per key: highest accepted token
	log   []WriteRecord
	takes int // writes with Seq 0: critical sections entered
}

// NewResource returns an empty resource timestamping with clock.
func NewResource(clock *Clock) *Resource {
	return &Resource{clock: clock, high: map[int]uint64{}}
}

// Write applies w unless its token is lower than one the resource has seen
// for w.Key, and reports whether it was accepted.
func (r *Resource) Write(w Write) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	ok := w.Token >= r.high[w.Key]
	if ok {
		r.high[w.Key] = w.Token
	}
	if w.Seq == 0 {
		r.takes++
	}
	r.log = append(r.log, WriteRecord{Write: w, Order: len(r.log), At: r.clock.Now(), Accepted: ok})
	return ok
}

// Takes returns how many critical sections have written to the resource.
func (r *Resource) Takes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.takes
}

// Log returns a copy of every write so far, in the resource's order.
func (r *Resource) Log() []WriteRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]WriteRecord(nil), r.log...)
}

// fence is how a worker reaches the resource: directly in the coordinator's
// process, over RPC from a worker process.
type fence interface {
	Write(ctx context.Context, w Write) (bool, error)
}

type localFence struct{ r *Resource }

func (f localFence) Write(_ context.Context, w Write) (bool, error) { return f.r.Write(w), nil }

// ResourceRPC is the resource's RPC service for worker processes.
type ResourceRPC struct{ r *Resource }

// Write is the RPC form of [Resource.Write].
func (s *ResourceRPC) Write(w Write, accepted *bool) error {
	*accepted = s.r.Write(w)
	return nil
}

// serveResource serves r on a loopback port until ctx ends, and returns the
// address.
func serveResource(ctx context.Context, r *Resource) (string, func(), error) {
	srv := rpc.NewServer()
	if err := srv.RegisterName("Resource", &ResourceRPC{r}); err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				srv.ServeConn(c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	stop := func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
	return ln.Addr().String(), stop, nil
}

// remoteFence writes to the coordinator's resource over RPC.
type remoteFence struct{ c *rpc.Client }

func (f remoteFence) Write(ctx context.Context, w Write) (bool, error) {
	var ok bool
	call := f.c.Go("Resource.Write", w, &ok, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		return ok, call.Error
	case <-ctx.Done():
		return false, ctx.Err()
	}
}
