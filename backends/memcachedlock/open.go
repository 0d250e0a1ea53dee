package memcachedlock

import (
	"context"
	"net/url"
	"strings"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/idemlock/lock"
)

// Schemes are the URL schemes this package registers with [lock.Open].
var Schemes = []string{"memcached"}

// Scheme is the URL scheme this package registers with lock.Register.
//
// Deprecated: use [Schemes], which every backend exports.
const Scheme = "memcached"

func init() {
	for _, s := range Schemes {
		lock.Register(s, open)
	}
}

// urlForm is the URL form that every URL error shows.
const urlForm = " (want memcached://host:port[,host:port...][/][?timeout=500ms&max_idle_conns=2&prefix=idemlock:])"

// open makes a Locker, and the client it owns, from
// memcached://host:port[,host:port...][/][?timeout=&max_idle_conns=&prefix=].
func open(_ context.Context, u *url.URL) (lock.Backend, error) {
	switch {
	case u.User != nil:
		return nil, errs.URLError("memcached's text protocol has no authentication: remove the user information" + urlForm)
	case u.Opaque != "":
		return nil, errs.URLError("write memcached://host:port, with two slashes" + urlForm)
	case u.Path != "" && u.Path != "/":
		return nil, errs.URLError("unexpected path %q"+urlForm, u.Path)
	case u.Fragment != "":
		return nil, errs.URLError("unexpected fragment" + urlForm)
	}
	servers, err := errs.Hosts(u)
	if err != nil {
		return nil, err
	}
	q, err := errs.Query(u)
	if err != nil {
		return nil, err
	}
	timeout, err := q.Duration("timeout", 0)
	if err != nil {
		return nil, err
	}
	maxIdle, err := q.Int("max_idle_conns", 0)
	if err != nil {
		return nil, err
	}
	var opts []Option
	if q.Has("prefix") {
		prefix, err := q.String("prefix", "")
		if err != nil {
			return nil, err
		}
		if err := checkPrefix(prefix); err != nil {
			return nil, errs.URLError("%v", err)
		}
		opts = append(opts, WithPrefix(prefix))
	}
	if err := q.Done(); err != nil {
		return nil, err
	}
	ss := new(memcache.ServerList)
	if err := ss.SetServers(servers...); err != nil {
		return nil, errs.OpError("resolving "+strings.Join(servers, ","), "", err)
	}
	client := memcache.NewFromSelector(ss)
	client.Timeout = timeout
	client.MaxIdleConns = maxIdle
	l, err := New(client, opts...)
	if err != nil {
		return nil, err
	}
	l.owned = true
	return l, nil
}
