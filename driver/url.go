package driver

import (
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Query reads the options of a backend's URL (its query string), each at
// most once, with errors from [Name.URLError] (so matching
// [lock.ErrInvalidURL]) that name the option, and reports the options that
// no call read:
//
//	q, err := errs.Query(u)
//	if err != nil {
//		return nil, err
//	}
//	timeout, err := q.Duration("timeout", 0)
//	…
//	if err := q.Done(); err != nil { // an unknown option
//		return nil, err
//	}
//
// A Query is used by one goroutine.
type Query struct {
	name   Name
	values url.Values
	read   []string
}

// Query parses u's query string.
func (n Name) Query(u *url.URL) (*Query, error) {
	v, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, n.URLError("bad query: %v", err)
	}
	return &Query{name: n, values: v}, nil
}

// Has reports whether the URL gives option name.
func (q *Query) Has(name string) bool { return q.values.Has(name) }

// String returns the value of option name, or def when the URL does not
// give it. An option given more than once is an error.
func (q *Query) String(name, def string) (string, error) {
	q.read = append(q.read, name)
	vals, ok := q.values[name]
	switch {
	case !ok:
		return def, nil
	case len(vals) != 1:
		return "", q.name.URLError("option %s given %d times", name, len(vals))
	}
	return vals[0], nil
}

// Duration returns option name as a positive duration ("500ms", "10s"),
// or def when the URL does not give it.
func (q *Query) Duration(name string, def time.Duration) (time.Duration, error) {
	s, err := q.String(name, "")
	if err != nil || !q.Has(name) {
		return def, err
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, q.name.URLError("%s=%q is not a positive duration (such as 500ms or 10s)", name, s)
	}
	return d, nil
}

// Int returns option name as a positive integer, or def when the URL does
// not give it.
func (q *Query) Int(name string, def int) (int, error) {
	s, err := q.String(name, "")
	if err != nil || !q.Has(name) {
		return def, err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, q.name.URLError("%s=%q is not a positive integer", name, s)
	}
	return n, nil
}

// Bool returns option name as a boolean (as strconv.ParseBool reads it),
// or def when the URL does not give it.
func (q *Query) Bool(name string, def bool) (bool, error) {
	s, err := q.String(name, "")
	if err != nil || !q.Has(name) {
		return def, err
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, q.name.URLError("%s=%q is not a boolean", name, s)
	}
	return b, nil
}

// Rest returns the options that no call read, for a backend that hands
// them on (to its client library's own URL parser).
func (q *Query) Rest() url.Values {
	rest := url.Values{}
	for k, v := range q.values {
		if !slices.Contains(q.read, k) {
			rest[k] = v
		}
	}
	return rest
}

// Done returns an error naming the options that no call read, and the
// ones that were read (the options the backend knows), or nil if every
// option was read.
func (q *Query) Done() error {
	rest := q.Rest()
	if len(rest) == 0 {
		return nil
	}
	unknown := make([]string, 0, len(rest))
	for k := range rest {
		unknown = append(unknown, k)
	}
	sort.Strings(unknown)
	known := slices.Clone(q.read)
	sort.Strings(known)
	known = slices.Compact(known)
	return q.name.URLError("unknown option %s (known: %s)", strings.Join(unknown, ", "), strings.Join(known, ", "))
}

// Hosts returns the comma-separated servers of u's host part
// ("h1:7000,h2:7000"), each host:port with a non-empty host and a port
// from 1 to 65535, or an error that names the bad one.
func (n Name) Hosts(u *url.URL) ([]string, error) {
	if u.Host == "" {
		return nil, n.URLError("no server address")
	}
	hosts := strings.Split(u.Host, ",")
	for _, hp := range hosts {
		host, port, err := net.SplitHostPort(hp)
		if err != nil || host == "" {
			return nil, n.URLError("server %q is not host:port", hp)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return nil, n.URLError("server %q has a bad port", hp)
		}
	}
	return hosts, nil
}
