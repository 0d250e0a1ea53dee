package memlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/internal/testenv"
)

// A waiter that is woken by a release and leaves without taking the key
// (its context ended at that moment) passes the wake-up on: the next waiter
// takes the free key at once, not at the old holder's TTL. Regression test
// of issue 13, finding 2, at the Subscription level.
func TestGivenUpWakeIsPassedOn(t *testing.T) {
	l := memlock.New()
	ctx := t.Context()
	holder, err := l.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	first, err := l.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	second, err := l.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := first.Wait(ctx, nil); err != nil {
		t.Fatalf("the first subscriber was not woken by the release: %v", err)
	}
	_ = first.Close() // gives up without trying the key
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := second.Wait(wctx, nil); err != nil {
		t.Fatalf("the second subscriber was never woken although the key is free: %v", err)
	}
}

// The same through lock.Acquire: the first waiter's context ends just as
// its wake-up arrives; the second waiter must still get the key long before
// the holder's TTL.
func TestAcquireAfterWokenWaiterGivesUp(t *testing.T) {
	l := memlock.New()
	ctx := t.Context()
	holder, err := l.TryAcquire(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// The first waiter's context is cancelled the moment its Wait is
	// woken, before it can try the key again.
	firstCtx, cancelFirst := context.WithCancel(ctx)
	defer cancelFirst()
	subscribed := make(chan struct{})
	first := &hookedNotifier{Locker: l, subscribed: subscribed, woken: cancelFirst}
	firstDone := make(chan error, 1)
	go func() {
		le, err := lock.Acquire(firstCtx, first, "k", time.Minute)
		if le != nil {
			_ = le.Release(ctx)
		}
		firstDone <- err
	}()
	<-subscribed
	second := &hookedNotifier{Locker: l, subscribed: make(chan struct{})}
	secondDone := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		le, err := lock.Acquire(sctx, second, "k", time.Minute)
		if le != nil {
			_ = le.Release(ctx)
		}
		secondDone <- err
	}()
	<-second.subscribed
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-firstDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("first waiter: %v, want it to give up with context.Canceled", err)
	}
	if err := <-secondDone; err != nil {
		t.Fatalf("second waiter: %v: the wake-up the first waiter gave up was lost", err)
	}
}

// hookedNotifier is a memlock Locker whose subscriptions close subscribed
// when Acquire first waits (after its attempt following Subscribe, so a
// release after that is the one it waits for) and call woken when a Wait
// returns nil.
type hookedNotifier struct {
	*memlock.Locker
	subscribed chan struct{}
	woken      func()
}

func (h *hookedNotifier) Subscribe(ctx context.Context, key string) (lock.Subscription, error) {
	sub, err := h.Locker.Subscribe(ctx, key)
	if err == nil {
		sub = &hookedSub{Subscription: sub, h: h}
	}
	return sub, err
}

type hookedSub struct {
	lock.Subscription
	h       *hookedNotifier
	waiting bool
}

func (s *hookedSub) Wait(ctx context.Context, held *lock.NotAcquiredError) error {
	if !s.waiting {
		s.waiting = true
		close(s.h.subscribed)
	}
	err := s.Subscription.Wait(ctx, held)
	if err == nil && s.h.woken != nil {
		s.h.woken()
	}
	return err
}

// Concurrent calls on one lease never misreport ownership.
func TestConcurrentLeaseCalls(t *testing.T) {
	l := memlock.New()
	testenv.RaceLeaseCalls(t, l, l, "k", time.Minute, 1000)
}
