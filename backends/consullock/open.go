package consullock

import (
	"context"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
)

// Schemes are the URL schemes this package registers with [lock.Open].
var Schemes = []string{"consul"}

func init() {
	for _, s := range Schemes {
		lock.Register(s, open)
	}
}

// open makes a Locker, with a client of its own, from a consul:// URL (see
// the package doc).
func open(_ context.Context, u *url.URL) (lock.Backend, error) {
	cfg, opts, err := ParseURL(u)
	// Overwrite the token in u, so that no error message of lock.Open can
	// show it.
	redactToken(u)
	if err != nil {
		return nil, err
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, errs.URLError("%v", err)
	}
	l, err := New(client, opts...)
	if err != nil {
		return nil, errs.URLError("%w", err)
	}
	if tr := cfg.Transport; tr != nil {
		l.owned = tr.CloseIdleConnections
	}
	return l, nil
}

// ParseURL turns a consul:// URL (see the package doc) into a client
// configuration and Locker options, without connecting. It leaves u as it
// is. Errors match [lock.ErrInvalidURL] and never contain the ACL token.
func ParseURL(u *url.URL) (*api.Config, []Option, error) {
	if !strings.EqualFold(u.Scheme, "consul") {
		return nil, nil, errs.URLError("scheme %q is not consul", u.Scheme)
	}
	q, err := errs.Query(u)
	if err != nil {
		return nil, nil, err
	}
	token, err := urlToken(u, q)
	if err != nil {
		return nil, nil, err
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.Fragment != "" {
		return nil, nil, errs.URLError("a consul URL has the form consul://[:TOKEN@]HOST:PORT/?options, with no path or fragment")
	}
	cfg := api.DefaultConfig()
	if u.Host != "" {
		if u.Port() == "" {
			return nil, nil, errs.URLError("host %q has no port (Consul's HTTP API listens on 8500 by default)", u.Host)
		}
		cfg.Address = u.Host
		cfg.Scheme = "http"
	}
	if token != "" {
		cfg.Token, cfg.TokenFile = token, ""
	}
	if err := clientOptions(cfg, q, token != ""); err != nil {
		return nil, nil, err
	}
	opts, err := lockerOptions(q)
	if err != nil {
		return nil, nil, err
	}
	return cfg, opts, q.Done()
}

// clientOptions applies the URL options that configure the client.
func clientOptions(cfg *api.Config, q *driver.Query, hasToken bool) error {
	dc, err := q.String("dc", cfg.Datacenter)
	if err != nil {
		return err
	}
	cfg.Datacenter = dc
	tls, err := q.Bool("tls", false)
	if err != nil {
		return err
	}
	if q.Has("tls") {
		cfg.Scheme = map[bool]string{true: "https", false: "http"}[tls]
	}
	file, err := q.String("token_file", "")
	if err != nil || !q.Has("token_file") {
		return err
	}
	if hasToken {
		return errs.URLError("token_file and a token in the URL both given")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return errs.URLError("token_file: %v", err)
	}
	cfg.Token, cfg.TokenFile = strings.TrimSpace(string(b)), ""
	return nil
}

// lockerOptions returns the Locker options the URL gives.
func lockerOptions(q *driver.Query) ([]Option, error) {
	var opts []Option
	for name, with := range map[string]func(string) Option{"prefix": WithPrefix, "session_name": WithSessionName} {
		v, err := q.String(name, "")
		if err != nil {
			return nil, err
		}
		if q.Has(name) {
			opts = append(opts, with(v))
		}
	}
	for name, with := range map[string]func(time.Duration) Option{"min_ttl": WithMinTTL, "lock_delay": WithLockDelay, "keep_warm": WithKeepWarm} {
		v, err := q.String(name, "")
		switch {
		case err != nil:
			return nil, err
		case !q.Has(name):
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return nil, errs.URLError("%s=%q is not a duration (such as 10s)", name, v)
		}
		opts = append(opts, with(d))
	}
	n, err := q.Int("max_record_size", 0)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		opts = append(opts, WithMaxRecordSize(n))
	}
	if err := driver.ParseFlag(q, &opts, "queue", WithQueue); err != nil {
		return nil, err
	}
	return opts, nil
}

// urlToken returns the ACL token in u: in the user info or the token
// option of its query q.
func urlToken(u *url.URL, q *driver.Query) (string, error) {
	var token string
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			token = p
		} else {
			token = u.User.Username()
		}
	}
	if q.Has("token") && token != "" {
		return "", errs.URLError("the token is given more than once")
	}
	t, err := q.String("token", token)
	if err != nil {
		return "", errs.URLError("the token is given more than once")
	}
	return t, nil
}

// redactToken overwrites the ACL token in u (user info or the token
// option) with "redacted".
func redactToken(u *url.URL) {
	if u.User != nil {
		u.User = url.UserPassword("", "redacted")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		// Unparsable: no token can be read from it, but it may hold one.
		u.RawQuery = "redacted"
		return
	}
	if _, ok := q["token"]; ok {
		q.Set("token", "redacted")
		u.RawQuery = q.Encode()
	}
}
