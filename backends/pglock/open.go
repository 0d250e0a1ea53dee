package pglock

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/driver"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Schemes are the URL schemes this package registers with [lock.Open]; see
// the package documentation for their form.
var Schemes = []string{"postgres", "postgresql"}

func init() {
	for _, s := range Schemes {
		lock.Register(s, open)
	}
}

// ParseURL turns a postgres:// or postgresql:// URL (see the package
// documentation) into a pool configuration and Locker options, without
// connecting. Errors match lock.ErrInvalidURL and never contain the URL's
// password.
func ParseURL(u *url.URL) (*pgxpool.Config, []Option, error) {
	if !slices.Contains(Schemes, strings.ToLower(u.Scheme)) {
		return nil, nil, errs.URLError("scheme %q is not postgres or postgresql", u.Scheme)
	}
	if u.Opaque != "" {
		return nil, nil, errs.URLError("want postgres://host:port/database")
	}
	q, err := errs.Query(u)
	if err != nil {
		return nil, nil, err
	}
	var opts []Option
	err = errors.Join(
		driver.ParseOption(q, &opts, "idemlock_table", driver.Text, WithTable),
		driver.ParseOption(q, &opts, "idemlock_schema", driver.Text, WithSchema),
		driver.ParseOption(q, &opts, "idemlock_cleanup_interval", time.ParseDuration, WithCleanupInterval),
		driver.ParseOption(q, &opts, "idemlock_max_record_size", strconv.Atoi, WithMaxRecordSize),
		driver.ParseFlag(q, &opts, "idemlock_queue", WithQueue),
	)
	if err != nil {
		return nil, nil, err
	}
	rest := q.Rest() // pgx's and libpq's own parameters
	for name := range rest {
		if strings.HasPrefix(name, "idemlock_") {
			return nil, nil, errs.URLError("unknown option %q", name)
		}
	}
	v := *u
	v.RawQuery = rest.Encode()
	cfg, err := pgxpool.ParseConfig(v.String())
	if err != nil {
		// pgx's parse errors show the connection string with the password
		// masked; say only what was wrong.
		why := "cannot parse"
		if uerr := errors.Unwrap(err); uerr != nil {
			why = uerr.Error()
		}
		return nil, nil, errs.URLError("%s in %s", strings.ReplaceAll(why, u.String(), u.Redacted()), u.Redacted())
	}
	return cfg, opts, nil
}

// open is the lock.Opener of the postgres schemes. The pool it makes is
// owned by the Locker and closed by its Close.
func open(ctx context.Context, u *url.URL) (lock.Backend, error) {
	cfg, opts, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pglock: connecting to %s: %w", u.Redacted(), err)
	}
	opts = append(opts, func(c *config) error {
		c.ownPool = true
		return nil
	})
	l, err := New(pool, opts...)
	if err != nil { // ParseURL checked the options: not expected
		pool.Close()
		return nil, err
	}
	return l, nil
}
