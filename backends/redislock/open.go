package redislock

import (
	"context"
	"errors"
	"net/url"
	"strings"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
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

// open makes a Locker that owns a new client for u.
func open(_ context.Context, u *url.URL) (b lock.Backend, err error) {
	defer func() {
		if r := recover(); r != nil { // go-redis panics on some option combinations
			b, err = nil, errs.URLError("%v", r)
		}
	}()
	base, mode, _ := strings.Cut(strings.ToLower(u.Scheme), "+")
	if base != "redis" && base != "rediss" {
		return nil, errs.URLError("unknown scheme %q", u.Scheme)
	}
	if u.Opaque != "" {
		return nil, errs.URLError("want %s://host:port, got an opaque URL", u.Scheme)
	}
	query, err := errs.Query(u)
	if err != nil {
		return nil, err
	}
	prefix, err := query.String("key_prefix", DefaultPrefix)
	if err != nil {
		return nil, err
	}
	if strings.ContainsAny(prefix, "{}") {
		return nil, errs.URLError("key_prefix %q contains '{' or '}'", prefix)
	}
	ctxTimeout, err := query.Bool("context_timeout_enabled", true)
	if err != nil {
		return nil, err
	}
	opts := []Option{WithPrefix(prefix)}
	if err := driver.ParseFlag(query, &opts, "queue", WithQueue); err != nil {
		return nil, err
	}
	q := query.Rest() // go-redis's own options
	hosts := strings.Split(u.Host, ",")
	if len(hosts) > 1 && mode == "" {
		return nil, errs.URLError("a %s URL takes one host; use %s+cluster:// or %s+sentinel:// for several", u.Scheme, base, base)
	}
	for _, h := range hosts[1:] {
		if h == "" {
			return nil, errs.URLError("empty host in the host list")
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
			return nil, errs.URLError("%v", cleanErr(err))
		}
		opt.ContextTimeoutEnabled = ctxTimeout
		client = redis.NewClient(opt)
	case "cluster":
		if v.Path != "" && v.Path != "/" {
			return nil, errs.URLError("a Cluster URL takes no database path, got %q", v.Path)
		}
		opt, err := redis.ParseClusterURL(raw)
		if err != nil {
			return nil, errs.URLError("%v", cleanErr(err))
		}
		opt.ContextTimeoutEnabled = ctxTimeout
		client = redis.NewClusterClient(opt)
	case "sentinel":
		opt, err := redis.ParseFailoverURL(raw)
		if err != nil {
			return nil, errs.URLError("%v", cleanErr(err))
		}
		if opt.MasterName == "" {
			return nil, errs.URLError("a Sentinel URL needs master_name=…")
		}
		if opt.RouteByLatency || opt.RouteRandomly {
			return nil, errs.URLError("route_by_latency and route_randomly would read locks from replicas")
		}
		opt.ContextTimeoutEnabled = ctxTimeout
		client = redis.NewFailoverClient(opt)
	default:
		return nil, errs.URLError("unknown scheme %q (want one of %s)", u.Scheme, strings.Join(Schemes, ", "))
	}
	l, err := New(client, opts...)
	if err != nil {
		_ = client.Close()
		return nil, err
	}
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
