package pglock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/pglock"
	"github.com/idemlock/lock/conformance"
	"github.com/idemlock/lock/internal/testenv"
	"github.com/jackc/pgx/v5"
)

// Issue 21.9: lock.Open does not connect, so a readiness probe needs Ping,
// and Ping must fail for a server that is not there.
func TestPingUnreachable(t *testing.T) {
	testenv.CheckPing(t, "postgres://u@127.0.0.1:1/db?connect_timeout=1", newLocker(t, pglock.WithTable(testTable(t))), pglock.ErrClosed)
}

// A table made before the fingerprint column gets it on first use.
func TestFingerprintColumnMigrated(t *testing.T) {
	table := testTable(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, postgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, stmt := range []string{
		fmt.Sprintf(`CREATE TABLE %s (key bytea PRIMARY KEY, token bigint NOT NULL, expires_at timestamptz NOT NULL, waiters boolean NOT NULL DEFAULT false, record bytea)`, pgx.Identifier{table}.Sanitize()),
		fmt.Sprintf(`CREATE SEQUENCE %s AS bigint CACHE 1 NO CYCLE`, pgx.Identifier{table + "_token"}.Sanitize()),
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	l := newLocker(t, pglock.WithTable(table))
	le, _, _, err := l.ClaimFingerprint(ctx, "k", time.Minute, []byte("fp"))
	if err != nil {
		t.Fatalf("ClaimFingerprint on a table without the fingerprint column: %v", err)
	}
	if _, _, holder, err := l.ClaimFingerprint(ctx, "k", time.Minute, nil); !errors.Is(err, lock.ErrNotAcquired) || string(holder) != "fp" {
		t.Fatalf("second ClaimFingerprint: holder %q, %v; want \"fp\" and ErrNotAcquired", holder, err)
	}
	_ = le.Release(ctx)
}

// Issue 21.4: PostgreSQL tells the holder nothing when its row is deleted
// (only waiters are notified), so the holder learns of a ForceRelease at
// its next refresh: within the refresh interval (a third of the TTL) and
// one round trip.
func TestLossDetection(t *testing.T) {
	ttl := lock.DefaultTTL
	l := newLocker(t, pglock.WithTable(testTable(t)))
	testenv.LossDetection(t, l, "k", ttl, ttl/3+conformance.SchedulingSlack)
}
