package consullock

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/idemlock/lock"
)

// Schemes are the URL schemes this package registers with [lock.Open].
var Schemes = []string{"consul"}

func init() {
	for _, s := range Schemes {
		lock.Register(s, open)
	}
}

// urlError is a rejected consul:// URL. It never carries the token.
type urlError struct{ why string }

func (e *urlError) Error() string { return "consullock: " + e.why }
func (e *urlError) Unwrap() error { return lock.ErrInvalidURL }

func badURL(format string, args ...any) error { return &urlError{fmt.Sprintf(format, args...)} }

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
		return nil, badURL("%v", err)
	}
	l := New(client, opts...)
	if l.err != nil {
		return nil, &urlError{l.err.Error()}
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
		return nil, nil, badURL("scheme %q is not consul", u.Scheme)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, nil, badURL("bad query: %v", err)
	}
	token, err := urlToken(u, q)
	if err != nil {
		return nil, nil, err
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.Fragment != "" {
		return nil, nil, badURL("a consul URL has the form consul://[:TOKEN@]HOST:PORT/?options, with no path or fragment")
	}
	cfg := api.DefaultConfig()
	if u.Host != "" {
		if u.Port() == "" {
			return nil, nil, badURL("host %q has no port (Consul's HTTP API listens on 8500 by default)", u.Host)
		}
		cfg.Address = u.Host
		cfg.Scheme = "http"
	}
	if token != "" {
		cfg.Token, cfg.TokenFile = token, ""
	}
	var opts []Option
	for name, vals := range q {
		if len(vals) != 1 {
			return nil, nil, badURL("option %s given %d times", name, len(vals))
		}
		o, err := urlOption(cfg, name, vals[0], token != "")
		if err != nil {
			return nil, nil, err
		}
		if o != nil {
			opts = append(opts, o)
		}
	}
	return cfg, opts, nil
}

// urlOption applies the URL option name=v to cfg, or returns it as a
// Locker option.
func urlOption(cfg *api.Config, name, v string, hasToken bool) (Option, error) {
	switch name {
	case "token":
		// read by urlToken
	case "token_file":
		if hasToken {
			return nil, badURL("token_file and a token in the URL both given")
		}
		b, err := os.ReadFile(v)
		if err != nil {
			return nil, badURL("token_file: %v", err)
		}
		cfg.Token, cfg.TokenFile = strings.TrimSpace(string(b)), ""
	case "dc":
		cfg.Datacenter = v
	case "tls":
		on, err := strconv.ParseBool(v)
		if err != nil {
			return nil, badURL("tls=%q is not a boolean", v)
		}
		cfg.Scheme = map[bool]string{true: "https", false: "http"}[on]
	case "prefix":
		return WithPrefix(v), nil
	case "session_name":
		return WithSessionName(v), nil
	case "min_ttl", "lock_delay", "keep_warm":
		d, err := time.ParseDuration(v)
		if err != nil {
			return nil, badURL("%s=%q is not a duration (such as 10s)", name, v)
		}
		return map[string]func(time.Duration) Option{
			"min_ttl": WithMinTTL, "lock_delay": WithLockDelay, "keep_warm": WithKeepWarm,
		}[name](d), nil
	case "max_record_size":
		n, err := strconv.Atoi(v)
		if err != nil {
			return nil, badURL("max_record_size=%q is not a number of bytes", v)
		}
		return WithMaxRecordSize(n), nil
	default:
		return nil, badURL("unknown option %q (known: dc, tls, token, token_file, prefix, session_name, min_ttl, lock_delay, keep_warm, max_record_size)", name)
	}
	return nil, nil
}

// urlToken returns the ACL token in u: in the user info or the token
// option of its query q.
func urlToken(u *url.URL, q url.Values) (string, error) {
	var token string
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			token = p
		} else {
			token = u.User.Username()
		}
	}
	if vals, ok := q["token"]; ok {
		if token != "" || len(vals) != 1 {
			return "", badURL("the token is given more than once")
		}
		token = vals[0]
	}
	return token, nil
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
