package pglock

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/idemlock/lock"
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

// urlError is an error about a URL; it matches lock.ErrInvalidURL.
type urlError struct{ msg string }

func (e *urlError) Error() string { return "pglock: " + e.msg }
func (e *urlError) Unwrap() error { return lock.ErrInvalidURL }

// ParseURL turns a postgres:// or postgresql:// URL (see the package
// documentation) into a pool configuration and Locker options, without
// connecting. Errors match lock.ErrInvalidURL and never contain the URL's
// password.
func ParseURL(u *url.URL) (*pgxpool.Config, []Option, error) {
	fail := func(format string, args ...any) (*pgxpool.Config, []Option, error) {
		return nil, nil, &urlError{fmt.Sprintf(format, args...) + " in " + u.Redacted()}
	}
	if s := strings.ToLower(u.Scheme); s != "postgres" && s != "postgresql" {
		return fail("scheme %q is not postgres or postgresql", u.Scheme)
	}
	if u.Opaque != "" {
		return fail("want postgres://host:port/database")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return fail("bad query: %v", err)
	}
	var opts []Option
	for name, vals := range q {
		if !strings.HasPrefix(name, "idemlock_") {
			continue // pgx's and libpq's own parameters
		}
		if len(vals) != 1 {
			return fail("option %s given %d times", name, len(vals))
		}
		v := vals[0]
		switch name {
		case "idemlock_table":
			if !identifier.MatchString(v) {
				return fail("idemlock_table %q is not 1-50 letters, digits and underscores", v)
			}
			opts = append(opts, WithTable(v))
		case "idemlock_schema":
			if !identifier.MatchString(v) {
				return fail("idemlock_schema %q is not 1-50 letters, digits and underscores", v)
			}
			opts = append(opts, WithSchema(v))
		case "idemlock_cleanup_interval":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return fail("idemlock_cleanup_interval %q is not a duration of zero or more", v)
			}
			opts = append(opts, WithCleanupInterval(d))
		case "idemlock_max_record_size":
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > 1<<30-1 {
				return fail("idemlock_max_record_size %q is not a count of bytes under 1 GiB", v)
			}
			opts = append(opts, WithMaxRecordSize(n))
		default:
			return fail("unknown option %q", name)
		}
		q.Del(name)
	}
	v := *u
	v.RawQuery = q.Encode()
	cfg, err := pgxpool.ParseConfig(v.String())
	if err != nil {
		// pgx's parse errors show the connection string with the password
		// masked; say only what was wrong.
		var why string
		if uerr := errors.Unwrap(err); uerr != nil {
			why = uerr.Error()
		} else {
			why = "cannot parse"
		}
		return fail("%s", strings.ReplaceAll(why, u.String(), u.Redacted()))
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
	opts = append(opts, func(c *config) { c.ownPool = true })
	l, err := New(pool, opts...)
	if err != nil {
		pool.Close()
		return nil, errors.Join(&urlError{"bad option in " + u.Redacted()}, err)
	}
	return l, nil
}
