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

func init() {
	lock.Register("consul", open)
}

// urlError is a rejected consul:// URL. It never carries the token.
type urlError struct{ why string }

func (e *urlError) Error() string { return "consullock: " + e.why }
func (e *urlError) Unwrap() error { return lock.ErrInvalidURL }

func badURL(format string, args ...any) error { return &urlError{fmt.Sprintf(format, args...)} }

// open makes a Locker, with a client of its own, from a consul:// URL (see
// the package doc).
func open(_ context.Context, u *url.URL) (lock.Backend, error) {
	// Take the token out of the URL first, so that no error message,
	// here or in lock.Open, can show it.
	token, err := takeToken(u)
	if err != nil {
		return nil, err
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.Fragment != "" {
		return nil, badURL("a consul URL has the form consul://[:TOKEN@]HOST:PORT/?options, with no path or fragment")
	}
	cfg := api.DefaultConfig()
	if u.Host != "" {
		if u.Port() == "" {
			return nil, badURL("host %q has no port (Consul's HTTP API listens on 8500 by default)", u.Host)
		}
		cfg.Address = u.Host
		cfg.Scheme = "http"
	}
	if token != "" {
		cfg.Token, cfg.TokenFile = token, ""
	}
	var opts []Option
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, badURL("bad query: %v", err)
	}
	for name, vals := range q {
		if len(vals) != 1 {
			return nil, badURL("option %s given %d times", name, len(vals))
		}
		v := vals[0]
		switch name {
		case "token":
			// taken by takeToken
		case "token_file":
			if token != "" {
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
			if on {
				cfg.Scheme = "https"
			} else {
				cfg.Scheme = "http"
			}
		case "prefix":
			opts = append(opts, WithKeyPrefix(v))
		case "session_name":
			opts = append(opts, WithSessionName(v))
		case "min_ttl", "lock_delay", "keep_warm":
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, badURL("%s=%q is not a duration (such as 10s)", name, v)
			}
			opts = append(opts, map[string]func(time.Duration) Option{
				"min_ttl": WithMinTTL, "lock_delay": WithLockDelay, "keep_warm": WithKeepWarm,
			}[name](d))
		case "max_record_size":
			n, err := strconv.Atoi(v)
			if err != nil {
				return nil, badURL("max_record_size=%q is not a number of bytes", v)
			}
			opts = append(opts, WithMaxRecordSize(n))
		default:
			return nil, badURL("unknown option %q (known: dc, tls, token, token_file, prefix, session_name, min_ttl, lock_delay, keep_warm, max_record_size)", name)
		}
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

// takeToken returns the ACL token in u (user info or the token option) and
// overwrites it in u with "redacted".
func takeToken(u *url.URL) (string, error) {
	var token string
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			token = p
		} else {
			token = u.User.Username()
		}
		u.User = url.UserPassword("", "redacted")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return "", badURL("bad query: %v", err)
	}
	if vals, ok := q["token"]; ok {
		q.Set("token", "redacted")
		u.RawQuery = q.Encode()
		if token != "" || len(vals) != 1 {
			return "", badURL("the token is given more than once")
		}
		token = vals[0]
	}
	return token, nil
}
