package redislock

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/idemlock/lock"
	"github.com/redis/go-redis/v9"
)

// Schemes are the URL schemes this package registers with [lock.Open]; see
// the package documentation for their form.
var Schemes = []string{"redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"}

func init() {
	for _, s := range Schemes {
		lock.Register(s, open)
	}
}

// urlError is an error about a URL; it matches lock.ErrInvalidURL.
type urlError struct{ msg string }

func (e *urlError) Error() string { return "redislock: " + e.msg }
func (e *urlError) Unwrap() error { return lock.ErrInvalidURL }

func badURL(format string, args ...any) error { return &urlError{fmt.Sprintf(format, args...)} }

// open makes a Locker that owns a new client for u.
func open(_ context.Context, u *url.URL) (b lock.Backend, err error) {
	defer func() {
		if r := recover(); r != nil { // go-redis panics on some option combinations
			b, err = nil, badURL("%v", r)
		}
	}()
	base, mode, _ := strings.Cut(strings.ToLower(u.Scheme), "+")
	if base != "redis" && base != "rediss" {
		return nil, badURL("unknown scheme %q", u.Scheme)
	}
	if u.Opaque != "" {
		return nil, badURL("want %s://host:port, got an opaque URL", u.Scheme)
	}
	q := u.Query()
	prefix := DefaultPrefix
	if q.Has("key_prefix") {
		prefix = q.Get("key_prefix")
		q.Del("key_prefix")
		if strings.ContainsAny(prefix, "{}") {
			return nil, badURL("key_prefix %q contains '{' or '}'", prefix)
		}
	}
	ctxTimeout := true
	if q.Has("context_timeout_enabled") {
		v, err := strconv.ParseBool(q.Get("context_timeout_enabled"))
		if err != nil {
			return nil, badURL("context_timeout_enabled=%q is not a boolean", q.Get("context_timeout_enabled"))
		}
		ctxTimeout = v
		q.Del("context_timeout_enabled")
	}
	hosts := strings.Split(u.Host, ",")
	if len(hosts) > 1 && mode == "" {
		return nil, badURL("a %s URL takes one host; use %s+cluster:// or %s+sentinel:// for several", u.Scheme, base, base)
	}
	for _, h := range hosts[1:] {
		if h == "" {
			return nil, badURL("empty host in the host list")
		}
		q.Add("addr", h)
	}
	v := *u
	v.Scheme, v.Host, v.RawQuery = base, hosts[0], q.Encode()
	raw := v.String()

	var client redis.UniversalClient
	switch mode {
	case "":
		opt, err := redis.ParseURL(raw)
		if err != nil {
			return nil, badURL("%v", cleanErr(err))
		}
		opt.ContextTimeoutEnabled = ctxTimeout
		client = redis.NewClient(opt)
	case "cluster":
		if v.Path != "" && v.Path != "/" {
			return nil, badURL("a Cluster URL takes no database path, got %q", v.Path)
		}
		opt, err := redis.ParseClusterURL(raw)
		if err != nil {
			return nil, badURL("%v", cleanErr(err))
		}
		opt.ContextTimeoutEnabled = ctxTimeout
		client = redis.NewClusterClient(opt)
	case "sentinel":
		opt, err := redis.ParseFailoverURL(raw)
		if err != nil {
			return nil, badURL("%v", cleanErr(err))
		}
		if opt.MasterName == "" {
			return nil, badURL("a Sentinel URL needs master_name=…")
		}
		if opt.RouteByLatency || opt.RouteRandomly {
			return nil, badURL("route_by_latency and route_randomly would read locks from replicas")
		}
		opt.ContextTimeoutEnabled = ctxTimeout
		client = redis.NewFailoverClient(opt)
	default:
		return nil, badURL("unknown scheme %q (want one of %s)", u.Scheme, strings.Join(Schemes, ", "))
	}
	l := New(client, WithPrefix(prefix))
	l.owned = client
	return l, nil
}

// cleanErr drops the URL (which may hold a password) from a url.Error.
func cleanErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
