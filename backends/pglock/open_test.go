package pglock_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/pglock"
	"github.com/idemlock/lock/internal/testenv"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url     string
		wantErr string // "" for success
	}{
		{"postgres://u:secret@127.0.0.1:5432/db?sslmode=disable", ""},
		{"postgresql://u:secret@127.0.0.1/db?idemlock_table=locks&idemlock_schema=infra&idemlock_cleanup_interval=30s&idemlock_max_record_size=1024&pool_max_conns=4", ""},
		{"postgres://u:secret@127.0.0.1/db?idemlock_table=bad-name", "idemlock_table"},
		{"postgres://u:secret@127.0.0.1/db?idemlock_schema=a.b", "idemlock_schema"},
		{"postgres://u:secret@127.0.0.1/db?idemlock_cleanup_interval=soon", "idemlock_cleanup_interval"},
		{"postgres://u:secret@127.0.0.1/db?idemlock_max_record_size=0", "idemlock_max_record_size"},
		{"postgres://u:secret@127.0.0.1/db?idemlock_prefix=x", "unknown option"},
		{"postgres://u:secret@127.0.0.1/db?idemlock_table=a&idemlock_table=b", "given 2 times"},
		{"postgres://u:secret@127.0.0.1/db?pool_max_conns=many", "pool_max_conns"},
		{"mysql://u:secret@127.0.0.1/db", "scheme"},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = pglock.ParseURL(u)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("ParseURL(%s): %v", tc.url, err)
		case tc.wantErr != "" && err == nil:
			t.Errorf("ParseURL(%s) succeeded, want an error about %s", tc.url, tc.wantErr)
		case err != nil && tc.wantErr != "":
			if !errors.Is(err, lock.ErrInvalidURL) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseURL(%s): %v, want an ErrInvalidURL about %s", tc.url, err, tc.wantErr)
			}
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseURL(%s): the error shows the password: %v", tc.url, err)
		}
	}
}

func TestOpen(t *testing.T) {
	raw := postgresURL(t)
	ctx := t.Context()
	{
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set("idemlock_table", testTable(t))
		u.RawQuery = q.Encode()
		testenv.CheckQueueURL(t, u.String(), "idemlock_queue")
	}
	for _, scheme := range pglock.Schemes {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		u.Scheme = scheme
		q := u.Query()
		q.Set("idemlock_table", testTable(t))
		u.RawQuery = q.Encode()
		b, err := lock.Open(ctx, u.String())
		if err != nil {
			t.Fatalf("Open(%s): %v", scheme, err)
		}
		err = lock.Do(ctx, b, "open/"+scheme, func(context.Context, lock.Lease) error { return nil }, lock.WithTTL(time.Minute))
		if err != nil {
			t.Errorf("Do on %s: %v", scheme, err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if _, err := b.TryAcquire(ctx, "k", time.Second); !errors.Is(err, pglock.ErrClosed) {
			t.Errorf("TryAcquire after Close: %v, want ErrClosed", err)
		}
	}
}
