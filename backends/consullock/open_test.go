package consullock_test

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/consullock"
	"github.com/idemlock/lock/internal/testenv"
)

func TestOpen(t *testing.T) {
	checkNoSessions(t)
	noLeaks(t)
	addr := testenv.ConsulAddr(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("not-checked-without-acls\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	name := url.QueryEscape(sessionName(t))
	testenv.CheckQueueURL(t, "consul://"+addr+"/?min_ttl=1s&session_name="+name, "queue")
	for _, u := range []string{
		"consul://" + addr + "/?min_ttl=1s&session_name=" + name,
		"consul://" + addr + "?min_ttl=1s&lock_delay=0s&keep_warm=5s&prefix=idemlock-open/&dc=dc1&tls=false&max_record_size=1000&session_name=" + name,
		"consul://:tok@" + addr + "/?min_ttl=1s&session_name=" + name,
		"consul://" + addr + "/?token=tok&min_ttl=1s&session_name=" + name,
		"consul://" + addr + "/?token_file=" + url.QueryEscape(tokenFile) + "&min_ttl=1s&session_name=" + name,
	} {
		b, err := lock.Open(t.Context(), u)
		if err != nil {
			t.Errorf("Open(%q): %v", u, err)
			continue
		}
		le, err := b.TryAcquire(t.Context(), key(t, "k"), time.Second)
		if err != nil {
			t.Errorf("Open(%q): TryAcquire: %v", u, err)
		} else if err := le.Release(t.Context()); err != nil {
			t.Errorf("Open(%q): Release: %v", u, err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("Open(%q): Close: %v", u, err)
		}
	}

	for _, u := range []string{
		"consul://127.0.0.1/",
		"consul://127.0.0.1:8500/kv/path",
		"consul://127.0.0.1:8500/#frag",
		"consul://127.0.0.1:8500/?bogus=1",
		"consul://127.0.0.1:8500/?min_ttl=soon",
		"consul://127.0.0.1:8500/?min_ttl=1500ms",
		"consul://127.0.0.1:8500/?lock_delay=2m",
		"consul://127.0.0.1:8500/?prefix=/abs/",
		"consul://127.0.0.1:8500/?tls=maybe",
		"consul://127.0.0.1:8500/?max_record_size=big",
		"consul://127.0.0.1:8500/?dc=a&dc=b",
		"consul://127.0.0.1:8500/?token_file=/nonexistent/idemlock",
	} {
		b, err := lock.Open(t.Context(), u)
		if err == nil {
			_ = b.Close()
			t.Errorf("Open(%q) succeeded, want an error", u)
		} else if !errors.Is(err, lock.ErrInvalidURL) {
			t.Errorf("Open(%q): %v, want an error matching ErrInvalidURL", u, err)
		}
	}

	// The token never shows in an error, wherever it was put.
	const secret = "s3cr3t-t0ken"
	for _, u := range []string{
		"consul://:" + secret + "@127.0.0.1:8500/?bogus=1",
		"consul://" + secret + "@127.0.0.1:8500/?bogus=1",
		"consul://127.0.0.1:8500/?token=" + secret + "&bogus=1",
		"consul://127.0.0.1:8500/?bogus=1&token=" + secret,
		"consul://:" + secret + "@127.0.0.1:8500/?token=" + secret,
		"consul://" + secret + "@127.0.0.1/",
		"consul://127.0.0.1:8500/?token=" + secret + "&bad=%zz", // a query that does not parse
	} {
		_, err := lock.Open(t.Context(), u)
		if err == nil {
			t.Errorf("Open(%q) succeeded, want an error", u)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("Open error shows the token: %v", err)
		}
	}
}

// ParseURL gives the client configuration and options lock.Open uses,
// without connecting, and leaves the caller's URL (and its token) alone.
func TestParseURL(t *testing.T) {
	raw := "consul://:s3cr3t@127.0.0.1:1/?dc=dc9&tls=true&min_ttl=2s&prefix=app/"
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	cfg, opts, err := consullock.ParseURL(u)
	if err != nil {
		t.Fatalf("ParseURL(%q): %v", raw, err)
	}
	if cfg.Address != "127.0.0.1:1" || cfg.Scheme != "https" || cfg.Datacenter != "dc9" || cfg.Token != "s3cr3t" {
		t.Errorf("ParseURL(%q) = address %q, scheme %q, dc %q, token %q", raw, cfg.Address, cfg.Scheme, cfg.Datacenter, cfg.Token)
	}
	if len(opts) != 2 {
		t.Errorf("ParseURL(%q) gave %d options, want 2 (min_ttl, prefix)", raw, len(opts))
	}
	if u.String() != raw {
		t.Errorf("ParseURL changed its URL to %q", u)
	}
	for _, bad := range []string{"redis://127.0.0.1:1/", "consul://s3cr3t@127.0.0.1:1/?token=s3cr3t"} {
		u, _ := url.Parse(bad)
		if _, _, err := consullock.ParseURL(u); !errors.Is(err, lock.ErrInvalidURL) || strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("ParseURL(%q): %v, want ErrInvalidURL without the token", bad, err)
		}
	}
	if !slices.Contains(consullock.Schemes, "consul") {
		t.Errorf("Schemes = %q, want consul among them", consullock.Schemes)
	}
}
