package idempotency

import (
	"context"
	"errors"
	"testing"
	"time"
)

type valKey struct{}

func TestDetachedCtx(t *testing.T) {
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), valKey{}, "v"))
	cancel()
	c := newDetachedCtx(parent, time.Hour)
	if c.Err() != nil || c.Value(valKey{}) != "v" {
		t.Fatalf("detached from a cancelled parent: err %v, value %v", c.Err(), c.Value(valKey{}))
	}
	if dl, ok := c.Deadline(); !ok || time.Until(dl) < 59*time.Minute {
		t.Fatalf("deadline %v %v", dl, ok)
	}
	c.stop()
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("after stop: %v", c.Err())
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after stop")
	}

	// Done before the deadline: the timer closes it, and Err agrees.
	short := newDetachedCtx(context.Background(), 20*time.Millisecond)
	done := short.Done()
	if short.Err() != nil {
		t.Fatalf("Err before the deadline: %v", short.Err())
	}
	<-done
	if !errors.Is(short.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err after the deadline: %v", short.Err())
	}
	short.stop()
	if !errors.Is(short.Err(), context.DeadlineExceeded) {
		t.Fatalf("stop changed the error to %v", short.Err())
	}

	// The deadline seen by Err first is sticky, and Done is then closed.
	past := newDetachedCtx(context.Background(), -time.Second)
	if !errors.Is(past.Err(), context.DeadlineExceeded) {
		t.Fatalf("past deadline: %v", past.Err())
	}
	select {
	case <-past.Done():
	default:
		t.Fatal("Done of an expired context is not closed")
	}
	// A child context works as with any parent.
	child, ccancel := context.WithCancel(newDetachedCtx(context.Background(), 10*time.Millisecond))
	defer ccancel()
	<-child.Done()
	if !errors.Is(child.Err(), context.DeadlineExceeded) {
		t.Fatalf("child: %v", child.Err())
	}
}
