package memcachedlock

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
)

// Scheme is the URL scheme this package registers with lock.Register.
const Scheme = "memcached"

func init() {
	lock.Register(Scheme, open)
}

// open makes a Locker, and the client it owns, from
// memcached://host:port[,host:port...][/][?timeout=&max_idle_conns=&prefix=].
func open(_ context.Context, u *url.URL) (lock.Backend, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: memcachedlock: %s (want memcached://host:port[,host:port...][/][?timeout=500ms&max_idle_conns=2&prefix=idemlock:])",
			lock.ErrInvalidURL, fmt.Sprintf(format, args...))
	}
	if u.User != nil {
		return nil, bad("memcached's text protocol has no authentication: remove the user information")
	}
	if u.Opaque != "" {
		return nil, bad("write memcached://host:port, with two slashes")
	}
	if u.Path != "" && u.Path != "/" {
		return nil, bad("unexpected path %q", u.Path)
	}
	if u.Fragment != "" {
		return nil, bad("unexpected fragment")
	}
	if u.Host == "" {
		return nil, bad("no server address")
	}
	var servers []string
	for _, hp := range strings.Split(u.Host, ",") {
		host, port, err := net.SplitHostPort(hp)
		if err != nil || host == "" {
			return nil, bad("server %q is not host:port", hp)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, bad("server %q has a bad port", hp)
		}
		servers = append(servers, hp)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, bad("bad query: %v", err)
	}
	var opts []Option
	var timeout time.Duration
	maxIdle := 0
	for name, vals := range q {
		if len(vals) != 1 {
			return nil, bad("option %q given %d times", name, len(vals))
		}
		v := vals[0]
		switch name {
		case "timeout":
			if timeout, err = time.ParseDuration(v); err != nil || timeout <= 0 {
				return nil, bad("timeout=%q is not a positive duration", v)
			}
		case "max_idle_conns":
			if maxIdle, err = strconv.Atoi(v); err != nil || maxIdle <= 0 {
				return nil, bad("max_idle_conns=%q is not a positive integer", v)
			}
		case "prefix":
			if len(v) > maxPrefixLen || !plainASCII(v) {
				return nil, bad("prefix=%q must be at most %d bytes of printable ASCII without spaces", v, maxPrefixLen)
			}
			opts = append(opts, WithPrefix(v))
		default:
			return nil, bad("unknown option %q", name)
		}
	}
	ss := new(memcache.ServerList)
	if err := ss.SetServers(servers...); err != nil {
		return nil, fmt.Errorf("memcachedlock: resolving %s: %w", strings.Join(servers, ","), err)
	}
	client := memcache.NewFromSelector(ss)
	client.Timeout = timeout
	client.MaxIdleConns = maxIdle
	l := New(client, opts...)
	l.owned = true
	return l, nil
}
