package idempotency_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/idempotency"
)

type receipt struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

func TestDoRunsOnce(t *testing.T) {
	g, _ := newGuard(t)
	ctx := context.Background()
	var runs atomic.Int64
	fn := func(ctx context.Context) (receipt, error) {
		runs.Add(1)
		return receipt{ID: "r1", Amount: 42}, nil
	}
	for i := range 3 {
		var replayed bool
		got, err := idempotency.Do(ctx, g, "msg-1", fn, idempotency.Replayed(&replayed))
		if err != nil || got != (receipt{"r1", 42}) {
			t.Fatalf("call %d: %+v, %v", i, got, err)
		}
		if replayed != (i > 0) {
			t.Fatalf("call %d: replayed %v", i, replayed)
		}
	}
	if runs.Load() != 1 {
		t.Fatalf("fn ran %d times", runs.Load())
	}
}

func TestDoInProgress(t *testing.T) {
	g, _ := newGuard(t, idempotency.WithLeaseTTL(3*time.Second))
	ctx := context.Background()
	started, proceed := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := idempotency.Do(ctx, g, "k", func(context.Context) (int, error) {
			close(started)
			<-proceed
			return 1, nil
		})
		done <- err
	}()
	<-started
	_, err := idempotency.Do(ctx, g, "k", func(context.Context) (int, error) {
		t.Error("a duplicate ran while the first was in flight")
		return 0, nil
	})
	var ip *idempotency.InProgressError
	if !errors.As(err, &ip) || !errors.Is(err, idempotency.ErrInProgress) || ip.RetryAfter > 3*time.Second || ip.RetryAfter <= 2*time.Second {
		t.Fatalf("duplicate in flight: %v, want an *InProgressError with RetryAfter the holder's remaining time (at most the 3 s TTL)", err)
	}
	close(proceed)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestDoErrorReleases(t *testing.T) {
	g, store := newGuard(t)
	ctx := context.Background()
	boom := errors.New("downstream timeout")
	runs := 0
	fn := func(context.Context) (string, error) {
		runs++
		if runs == 1 {
			return "", boom
		}
		return "ok", nil
	}
	if _, err := idempotency.Do(ctx, g, "k", fn); !errors.Is(err, boom) {
		t.Fatalf("first: %v", err)
	}
	if store.Len() != 0 || store.Records() != 0 {
		t.Fatalf("a failed run left the key held or recorded")
	}
	if v, err := idempotency.Do(ctx, g, "k", fn); err != nil || v != "ok" || runs != 2 {
		t.Fatalf("retry: %q %v, %d runs", v, err, runs)
	}
}

func TestDoPermanentStored(t *testing.T) {
	g, _ := newGuard(t)
	ctx := context.Background()
	runs := 0
	fn := func(context.Context) (int, error) {
		runs++
		return 0, idempotency.Permanent(errors.New("card declined"))
	}
	_, err := idempotency.Do(ctx, g, "k", fn)
	if err == nil || err.Error() != "card declined" {
		t.Fatalf("first: %v", err)
	}
	_, err = idempotency.Do(ctx, g, "k", fn)
	var se *idempotency.StoredError
	if !errors.As(err, &se) || se.Message != "card declined" || runs != 1 {
		t.Fatalf("duplicate of a permanent failure: %v (%d runs)", err, runs)
	}
	if idempotency.Permanent(nil) != nil {
		t.Fatal("Permanent(nil) != nil")
	}
}

func TestDoPanicReleases(t *testing.T) {
	g, store := newGuard(t)
	func() {
		defer func() {
			if recover() != "boom" {
				t.Fatal("the panic did not continue")
			}
		}()
		_, _ = idempotency.Do(context.Background(), g, "k", func(context.Context) (int, error) { panic("boom") })
	}()
	if store.Len() != 0 {
		t.Fatal("a panic left the key held")
	}
}

func TestDoPayloadMismatch(t *testing.T) {
	g, _ := newGuard(t)
	ctx := context.Background()
	fn := func(context.Context) (int, error) { return 7, nil }
	if _, err := idempotency.Do(ctx, g, "k", fn, idempotency.WithPayload([]byte("a"))); err != nil {
		t.Fatal(err)
	}
	if _, err := idempotency.Do(ctx, g, "k", fn, idempotency.WithPayload([]byte("b"))); !errors.Is(err, idempotency.ErrKeyReused) {
		t.Fatalf("different payload: %v, want ErrKeyReused", err)
	}
	if v, err := idempotency.Do(ctx, g, "k", fn, idempotency.WithPayload([]byte("a"))); err != nil || v != 7 {
		t.Fatalf("same payload: %v %v", v, err)
	}
}

func TestDoLeaseLost(t *testing.T) {
	store := &losingStore{Locker: memlock.New(), lost: make(chan struct{})}
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }), idempotency.WithLeaseTTL(lostTTL))
	ctx := context.Background()
	v, err := idempotency.Do(ctx, g, "k", func(ctx context.Context) (string, error) {
		<-ctx.Done() // the lease is lost: stop touching the resource
		if !errors.Is(context.Cause(ctx), lock.ErrLeaseLost) {
			t.Errorf("cause %v, want ErrLeaseLost", context.Cause(ctx))
		}
		// A newer owner takes the key and completes.
		le, _, err := store.Locker.Claim(context.Background(), store.lastKey(), time.Minute)
		if err != nil {
			t.Errorf("newer owner: %v", err)
			return "", nil
		}
		_ = store.Locker.Complete(context.Background(), le, []byte("newer"), time.Hour)
		return "late result", nil
	})
	if !errors.Is(err, lock.ErrLeaseLost) || !errors.Is(err, lock.ErrNotHeld) || v != "late result" {
		t.Fatalf("Do after a lost lease: %q, %v; want the result and an error matching ErrLeaseLost and ErrNotHeld", v, err)
	}
	_, rec, _ := store.Locker.Claim(ctx, store.lastKey(), time.Minute)
	if string(rec) != "newer" {
		t.Fatalf("the lost lease's completion overwrote the newer owner's record: %q", rec)
	}
}

func TestDoToken(t *testing.T) {
	g, _ := newGuard(t)
	var last uint64
	for range 3 {
		_, _ = idempotency.Do(context.Background(), g, "k", func(ctx context.Context) (int, error) {
			tok, ok := idempotency.TokenFromContext(ctx)
			if !ok || tok <= last {
				t.Errorf("token %d (ok %v) after %d", tok, ok, last)
			}
			last = tok
			return 0, errors.New("retry me")
		})
	}
}

func TestDoInvalidInput(t *testing.T) {
	g, _ := newGuard(t)
	ctx := context.Background()
	fn := func(context.Context) (int, error) { return 0, nil }
	if _, err := idempotency.Do(ctx, nil, "k", fn); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("nil Guard: %v", err)
	}
	if _, err := idempotency.Do[int](ctx, g, "k", nil); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("nil fn: %v", err)
	}
	for _, key := range []string{"", "bad\xff", string(make([]byte, idempotency.MaxWorkerKeyLen+1))} {
		if _, err := idempotency.Do(ctx, g, key, fn); !errors.Is(err, idempotency.ErrInvalidKey) {
			t.Errorf("key %.10q: %v", key, err)
		}
	}
	if _, err := idempotency.Do(ctx, g, "k", fn, idempotency.WithCodec(nil)); !errors.Is(err, idempotency.ErrInvalidOption) {
		t.Errorf("nil codec: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := idempotency.Do(cctx, g, "k", fn); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

func TestDoStoreDown(t *testing.T) {
	store := &spyStore{Locker: memlock.New()}
	store.setClaimErr(errDown)
	g, _ := idempotency.New(store, idempotency.WithScope(func(*http.Request) string { return "all" }))
	_, err := idempotency.Do(context.Background(), g, "k", func(context.Context) (int, error) {
		t.Error("fn ran without a claim")
		return 0, nil
	})
	if !errors.Is(err, idempotency.ErrStore) || !errors.Is(err, errDown) {
		t.Fatalf("store down: %v", err)
	}
}

// Worker and HTTP keys never meet, even with the same text.
func TestDoAndHTTPKeysSeparate(t *testing.T) {
	g, _ := newGuard(t)
	h := &counter{}
	send(g.Middleware(h), req{key: "same"})
	v, err := idempotency.Do(context.Background(), g, "same", func(context.Context) (int, error) { return 5, nil })
	if err != nil || v != 5 {
		t.Fatalf("worker key collided with an HTTP key: %v %v", v, err)
	}
}

// A result that cannot be encoded leaves a tombstone: fn never runs twice.
func TestDoUnencodable(t *testing.T) {
	g, _ := newGuard(t)
	runs := 0
	fn := func(context.Context) (func(), error) { runs++; return func() {}, nil }
	if _, err := idempotency.Do(context.Background(), g, "k", fn); err == nil {
		t.Fatal("an unencodable result reported no error")
	}
	_, err := idempotency.Do(context.Background(), g, "k", fn)
	if !errors.Is(err, idempotency.ErrNotReplayable) || runs != 1 {
		t.Fatalf("duplicate: %v (%d runs)", err, runs)
	}
}

// Work that outlasts the lease TTL keeps the key: the keep-alive starts at
// a third of the TTL and renews from then on. The TTL leaves the keeper
// two renewals of scheduling slack (a loaded machine under -race).
func TestDoOutlastsLeaseTTL(t *testing.T) {
	const ttl = 3 * conformance.SchedulingSlack
	g, store := newGuard(t, idempotency.WithLeaseTTL(ttl))
	ctx := context.Background()
	v, err := idempotency.Do(ctx, g, "long", func(ctx context.Context) (int, error) {
		deadline := time.Now().Add(2 * ttl) // time is what is under test
		for time.Now().Before(deadline) {
			if ctx.Err() != nil {
				t.Errorf("the lease was lost while kept alive: %v", context.Cause(ctx))
				return 0, ctx.Err()
			}
			if _, err := idempotency.Do(context.Background(), g, "long", func(context.Context) (int, error) { return 0, nil }); !errors.Is(err, idempotency.ErrInProgress) {
				t.Errorf("a duplicate during the long run: %v, want ErrInProgress", err)
				return 0, nil
			}
			time.Sleep(ttl / 8)
		}
		return 1, nil
	})
	if err != nil || v != 1 || store.Records() != 1 {
		t.Fatalf("long run: %v %v, %d records", v, err, store.Records())
	}
}
