package lock_test

import (
	"context"
	"errors"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
)

func TestOpenMem(t *testing.T) {
	for _, u := range []string{"mem://", "MEM://", "mem:"} {
		b, err := lock.Open(t.Context(), u)
		if err != nil {
			t.Fatalf("Open(%q): %v", u, err)
		}
		if _, ok := b.(*memlock.Locker); !ok {
			t.Errorf("Open(%q) = %T, want *memlock.Locker", u, b)
		}
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want error
	}{
		{"nosuch://host", lock.ErrUnknownScheme},
		{"127.0.0.1:6379", lock.ErrInvalidURL},
		{"", lock.ErrInvalidURL},
		{"://x", lock.ErrInvalidURL},
		{"mem://somehost", lock.ErrInvalidURL},
		{"mem://?size=1", lock.ErrInvalidURL},
	} {
		b, err := lock.Open(t.Context(), tc.url)
		if !errors.Is(err, tc.want) || b != nil {
			t.Errorf("Open(%q) = (%v, %v), want %v", tc.url, b, err, tc.want)
		}
	}
}

func TestOpenRedactsPassword(t *testing.T) {
	_, err := lock.Open(t.Context(), "mem://user:hunter2@host")
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("Open error %v must exist and not show the password", err)
	}
}

func TestRegister(t *testing.T) {
	open := func(context.Context, *url.URL) (lock.Backend, error) { return memlock.New(), nil }
	// The registry is process-wide: a scheme of its own keeps -count=N runs
	// from meeting the previous run's registration.
	scheme := "idemlock-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	lock.Register(scheme, open)
	if !slices.Contains(lock.Schemes(), scheme) {
		t.Errorf("Schemes() = %v, missing the registered scheme", lock.Schemes())
	}
	for name, reg := range map[string]func(){
		"duplicate":    func() { lock.Register(strings.ToUpper(scheme), open) },
		"empty scheme": func() { lock.Register("", open) },
		"nil opener":   func() { lock.Register("idemlock-other", nil) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register with a %s did not panic", name)
				}
			}()
			reg()
		}()
	}
}
