package lock_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/observe"
)

// BenchmarkObserved is BenchmarkHelpers on an observed memlock: with an
// observer that does nothing (the cost of the hooks and wrappers), with
// the slog adapter on a logger at Info (the events are debug: one Enabled
// check each) and at Debug (every event formatted, to a handler that
// discards it).
func BenchmarkObserved(b *testing.B) {
	for _, tc := range []struct {
		name string
		o    observe.Observer
	}{
		{"nop", observe.Func(func(context.Context, observe.Event) {})},
		{"slog-info", observe.Slog(slog.New(slog.NewTextHandler(discard{}, &slog.HandlerOptions{Level: slog.LevelInfo})))},
		{"slog-debug", observe.Slog(slog.New(slog.NewTextHandler(discard{}, &slog.HandlerOptions{Level: slog.LevelDebug})))},
	} {
		b.Run(tc.name, func(b *testing.B) { benchHelpers(b, lock.Observe(memlock.New(), tc.o)) })
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkObserverOfOff is what observation costs a helper when it is
// off: the one type assertion that finds no observer on a plain Locker.
func BenchmarkObserverOfOff(b *testing.B) {
	var l lock.Locker = memlock.New()
	for b.Loop() {
		if lock.ObserverOf(l) != nil {
			b.Fatal("observer on a plain Locker")
		}
	}
}
