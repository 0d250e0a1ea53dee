package observe

import (
	"context"
	"log/slog"
)

// Slog returns an Observer that logs every event to logger (slog.Default()
// when nil) with structured attributes: "kind", "outcome", "backend",
// "class", and those of the event's fields that are set ("key" only with
// [WithRawKeys], "token", "wait", "attempts", "wakeups", "latency", "hold",
// "status", "error").
//
// Levels: a lost lease, a refresh or release that failed, a backend error
// on a take and an idempotency tombstone are logged at Warn; an idempotency
// store error at Error; a reused idempotency key (fingerprint mismatch) and
// work released after an error at Info; everything else (takes, waits,
// renewals, releases, replays) at Debug. An event below the logger's level
// costs one Enabled call.
func Slog(logger *slog.Logger) Observer {
	if logger == nil {
		logger = slog.Default()
	}
	return slogObserver{logger}
}

type slogObserver struct{ l *slog.Logger }

// Level returns the level the Slog observer logs e at.
func Level(e Event) slog.Level {
	switch e.Kind {
	case KindLost:
		return slog.LevelWarn
	case KindIdempotency:
		switch e.Outcome {
		case StoreError:
			return slog.LevelError
		case Tombstone:
			return slog.LevelWarn
		case FingerprintMismatch, ReleasedAfterError:
			return slog.LevelInfo
		}
		return slog.LevelDebug
	}
	if e.Outcome == Failed || e.Kind == KindRefresh && e.Outcome == NotHeld {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

func (s slogObserver) Observe(ctx context.Context, e Event) {
	level := Level(e)
	if !s.l.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
		slog.String("kind", e.Kind.String()),
		slog.String("outcome", string(e.Outcome)),
		slog.String("backend", e.Backend),
		slog.String("class", e.Class))
	if e.Key != "" {
		attrs = append(attrs, slog.String("key", e.Key))
	}
	if e.Token != 0 {
		attrs = append(attrs, slog.Uint64("token", e.Token))
	}
	if e.Kind == KindAcquire {
		attrs = append(attrs, slog.Duration("wait", e.Wait), slog.Int("attempts", e.Attempts), slog.Int("wakeups", e.Wakeups))
	}
	if e.Latency != 0 {
		attrs = append(attrs, slog.Duration("latency", e.Latency))
	}
	if e.Hold != 0 {
		attrs = append(attrs, slog.Duration("hold", e.Hold))
	}
	if e.Status != 0 {
		attrs = append(attrs, slog.Int("status", e.Status))
	}
	if e.Err != nil {
		attrs = append(attrs, slog.String("error", e.Err.Error()))
	}
	s.l.LogAttrs(ctx, level, message(e), attrs...)
}

// message is the log line's message: what happened, in a few words.
func message(e Event) string {
	switch e.Kind {
	case KindTryAcquire:
		return "lock: try acquire"
	case KindAcquire:
		return "lock: acquire"
	case KindRefresh:
		if e.Outcome != OK {
			return "lock: refresh failed"
		}
		return "lock: refresh"
	case KindRelease:
		return "lock: release"
	case KindLost:
		return "lock: lease lost"
	case KindIdempotency:
		return "idempotency: " + string(e.Outcome)
	}
	return "lock: event"
}
