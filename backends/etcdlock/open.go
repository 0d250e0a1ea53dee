package etcdlock

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
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

// ParseURL turns an etcd:// URL (see the package documentation) into a
// client configuration and Locker options, without connecting. Errors match
// lock.ErrInvalidURL and never contain the URL's password.
func ParseURL(u *url.URL) (clientv3.Config, []Option, error) {
	var cfg clientv3.Config
	switch {
	case !strings.EqualFold(u.Scheme, "etcd"):
		return cfg, nil, errs.URLError("scheme %q is not etcd", u.Scheme)
	case u.User != nil:
		return cfg, nil, errs.URLError("credentials are not supported in the URL; build a clientv3.Client with them and use etcdlock.New")
	case u.Opaque != "":
		return cfg, nil, errs.URLError("want etcd://host:port")
	case u.Path != "" && u.Path != "/":
		return cfg, nil, errs.URLError("unexpected path %q (options go in the query)", u.Path)
	case u.Fragment != "":
		return cfg, nil, errs.URLError("unexpected fragment")
	}
	hosts, err := errs.Hosts(u)
	if err != nil {
		return cfg, nil, err
	}
	q, err := errs.Query(u)
	if err != nil {
		return cfg, nil, err
	}
	dial, err := q.Duration("dial_timeout", DefaultDialTimeout)
	if err != nil {
		return cfg, nil, err
	}
	var opts []Option
	err = errors.Join(
		driver.ParseOption(q, &opts, "prefix", driver.Text, WithPrefix),
		driver.ParseOption(q, &opts, "lease_pool", strconv.Atoi, WithLeasePool),
		driver.ParseOption(q, &opts, "ttl_slack", time.ParseDuration, WithTTLSlack),
		driver.ParseOption(q, &opts, "timeout", time.ParseDuration, WithTimeout),
		driver.ParseOption(q, &opts, "max_record_size", strconv.Atoi, WithMaxRecordSize),
		driver.ParseOption(q, &opts, "retention_bucket", time.ParseDuration, WithRetentionBucket),
		driver.ParseFlag(q, &opts, "queue", WithQueue),
		q.Done(),
	)
	if err != nil {
		return cfg, nil, err
	}
	cfg.Endpoints, cfg.DialTimeout = hosts, dial
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
	opts = append(opts, func(c *config) error {
		c.clientCloseFn = client.Close
		return nil
	})
	l, err := New(client, opts...)
	if err != nil { // ParseURL checked the options: not expected
		_ = client.Close()
		return nil, err
	}
	return l, nil
}
