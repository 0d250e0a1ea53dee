package etcdlock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/idemlock/lock"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DefaultDialTimeout is the dial timeout of a client made by lock.Open.
const DefaultDialTimeout = 5 * time.Second

// Schemes are the URL schemes this package registers with [lock.Open]; see
// the package documentation for their form.
var Schemes = []string{"etcd"}

func init() {
	for _, s := range Schemes {
		lock.Register(s, open)
	}
}

// urlError is an error about an etcd:// URL; it matches lock.ErrInvalidURL.
type urlError struct{ msg string }

func (e *urlError) Error() string { return "etcdlock: " + e.msg }
func (e *urlError) Unwrap() error { return lock.ErrInvalidURL }

// ParseURL turns an etcd:// URL (see the package documentation) into a
// client configuration and Locker options, without connecting. Errors match
// lock.ErrInvalidURL and never contain the URL's password.
func ParseURL(u *url.URL) (clientv3.Config, []Option, error) {
	var cfg clientv3.Config
	fail := func(format string, args ...any) (clientv3.Config, []Option, error) {
		return cfg, nil, &urlError{fmt.Sprintf(format, args...) + " in " + u.Redacted()}
	}
	if !strings.EqualFold(u.Scheme, "etcd") {
		return fail("scheme %q is not etcd", u.Scheme)
	}
	if u.User != nil {
		return fail("credentials are not supported in the URL; build a clientv3.Client with them and use etcdlock.New")
	}
	if u.Opaque != "" {
		return fail("want etcd://host:port")
	}
	if u.Path != "" && u.Path != "/" {
		return fail("unexpected path %q (options go in the query)", u.Path)
	}
	if u.Fragment != "" {
		return fail("unexpected fragment")
	}
	if u.Host == "" {
		return fail("no host:port")
	}
	for _, hp := range strings.Split(u.Host, ",") {
		host, port, err := net.SplitHostPort(hp)
		if err != nil || host == "" {
			return fail("endpoint %q is not host:port", hp)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fail("endpoint %q has a bad port", hp)
		}
		cfg.Endpoints = append(cfg.Endpoints, hp)
	}
	cfg.DialTimeout = DefaultDialTimeout
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return fail("bad query: %v", err)
	}
	var opts []Option
	for name, vals := range q {
		if len(vals) != 1 {
			return fail("option %s given %d times", name, len(vals))
		}
		v := vals[0]
		duration := func() (time.Duration, bool) {
			d, err := time.ParseDuration(v)
			return d, err == nil
		}
		integer := func() (int, bool) {
			n, err := strconv.Atoi(v)
			return n, err == nil
		}
		switch name {
		case "prefix":
			opts = append(opts, WithPrefix(v))
		case "dial_timeout":
			d, ok := duration()
			if !ok || d <= 0 {
				return fail("dial_timeout %q is not a positive duration", v)
			}
			cfg.DialTimeout = d
		case "lease_pool":
			n, ok := integer()
			if !ok || n < 0 {
				return fail("lease_pool %q is not a count", v)
			}
			opts = append(opts, WithLeasePool(n))
		case "ttl_slack":
			d, ok := duration()
			if !ok || d < 0 || d > maxTTLSlack {
				return fail("ttl_slack %q is not a duration in [0, %v]", v, maxTTLSlack)
			}
			opts = append(opts, WithTTLSlack(d))
		case "timeout":
			d, ok := duration()
			if !ok || d <= 0 {
				return fail("timeout %q is not a positive duration", v)
			}
			opts = append(opts, WithTimeout(d))
		case "max_record_size":
			n, ok := integer()
			if !ok || n <= 0 {
				return fail("max_record_size %q is not a positive count of bytes", v)
			}
			opts = append(opts, WithMaxRecordSize(n))
		case "retention_bucket":
			d, ok := duration()
			if !ok || d < time.Second || d > 24*time.Hour {
				return fail("retention_bucket %q is not a duration in [1s, 24h]", v)
			}
			opts = append(opts, WithRetentionBucket(d))
		default:
			return fail("unknown option %q", name)
		}
	}
	return cfg, opts, nil
}

// open is the lock.Opener of the etcd scheme. The client it makes is owned
// by the Locker and closed by its Close.
func open(ctx context.Context, u *url.URL) (lock.Backend, error) {
	cfg, opts, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg.Logger = zap.NewNop() // errors are returned; retries are not news
	client, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdlock: connecting to %s: %w", u.Redacted(), err)
	}
	opts = append(opts, func(c *config) { c.clientCloseFn = client.Close })
	l, err := New(client, opts...)
	if err != nil {
		_ = client.Close()
		return nil, errors.Join(&urlError{"bad option in " + u.Redacted()}, err)
	}
	return l, nil
}
