package driver_test

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

func TestOpErrorCtx(t *testing.T) {
	stream := errors.New("stream closed")
	ctx, cancel := context.WithCancel(context.Background())
	const n = driver.Name("x")
	if err := n.OpErrorCtx(ctx, "take", "k", stream); !errors.Is(err, stream) || errors.Is(err, context.Canceled) {
		t.Errorf("live ctx: %v, want the cause alone", err)
	}
	cancel()
	err := n.OpErrorCtx(ctx, "take", "k", stream)
	if !errors.Is(err, stream) || !errors.Is(err, context.Canceled) {
		t.Errorf("ended ctx: %v, want the cause and context.Canceled", err)
	}
	if got, want := err.Error(), `x: take "k": context canceled (stream closed)`; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	var de *driver.Error
	if err := n.OpErrorCtx(ctx, "take", "k", context.Canceled); !errors.As(err, &de) || de.Err != context.Canceled {
		t.Errorf("ctx's own error: %v, want it wrapped once", err)
	}
}

type optConfig struct{ n int }

type optOption func(*optConfig) error

func withN(n int) optOption {
	return func(c *optConfig) error {
		if n < 0 {
			return driver.Name("x").InvalidArgument("n %d is negative", n)
		}
		c.n = n
		return nil
	}
}

// query returns the options of the URL raw, for backend "x".
func query(t *testing.T, raw string) *driver.Query {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q, err := driver.Name("x").Query(u)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestParseFlag(t *testing.T) {
	q := query(t, "x://h:1/?on=true&one=1&off=false&bad=yes")
	var opts []optOption
	with := func() optOption { return withN(1) }
	for _, name := range []string{"on", "one"} {
		if err := driver.ParseFlag(q, &opts, name, with); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, name := range []string{"off", "absent"} {
		if err := driver.ParseFlag(q, &opts, name, with); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if len(opts) != 2 {
		t.Errorf("%d options from on=true, one=1, off=false and an absent flag; want 2", len(opts))
	}
	if err := driver.ParseFlag(q, &opts, "bad", with); !errors.Is(err, lock.ErrInvalidURL) || !strings.Contains(err.Error(), "bad") {
		t.Errorf("bad=yes: %v, want an ErrInvalidURL naming the option", err)
	}
	if err := q.Done(); err != nil {
		t.Errorf("Done after reading every option: %v", err)
	}
}

func TestParseOption(t *testing.T) {
	q := query(t, "x://h:1/?n=3&bad=-1&word=a&twice=1&twice=2")
	var opts []optOption
	if err := driver.ParseOption(q, &opts, "n", strconv.Atoi, withN); err != nil || len(opts) != 1 {
		t.Fatalf("n=3: %v, %d options", err, len(opts))
	}
	if err := driver.ParseOption(q, &opts, "absent", strconv.Atoi, withN); err != nil || len(opts) != 1 {
		t.Errorf("an absent option: %v, %d options; want nil and none added", err, len(opts))
	}
	err := driver.ParseOption(q, &opts, "bad", strconv.Atoi, withN)
	if !errors.Is(err, lock.ErrInvalidURL) || !errors.Is(err, lock.ErrInvalidArgument) || err.Error() != "x: bad: n -1 is negative" {
		t.Errorf("bad=-1: %v, want an ErrInvalidURL and ErrInvalidArgument naming the option", err)
	}
	if err := driver.ParseOption(q, &opts, "word", strconv.Atoi, withN); !errors.Is(err, lock.ErrInvalidURL) || !strings.Contains(err.Error(), "word") {
		t.Errorf("word=a: %v, want an ErrInvalidURL naming the option", err)
	}
	if err := driver.ParseOption(q, &opts, "twice", strconv.Atoi, withN); !errors.Is(err, lock.ErrInvalidURL) {
		t.Errorf("an option given twice: %v, want ErrInvalidURL", err)
	}
	if len(opts) != 1 {
		t.Errorf("%d options after the bad ones, want 1", len(opts))
	}
	var c optConfig
	if err := driver.Apply(&c, opts); err != nil || c.n != 3 {
		t.Errorf("Apply: %v, n=%d; want n=3", err, c.n)
	}
	if err := q.Done(); err != nil {
		t.Errorf("Done after reading every option: %v", err)
	}
}
