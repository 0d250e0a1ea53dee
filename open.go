package lock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Backend is a [Store] (so a Locker too) that owns resources (connections,
// a subscription) that Close frees. Every built-in backend's Locker is one,
// so what [Open] returns can be handed to the idempotency helper as it is.
// A Locker built by a backend's New from a client the caller passed in never
// closes that client; one made by [Open] closes the client Open created. A
// custom backend that has no records of its own can get Claim and Complete
// from package backends/kvlock.
type Backend interface {
	Store
	io.Closer
}

// Opener makes a Backend from a URL whose scheme it was registered for. ctx
// bounds the opening only: an Opener must not keep it for later work.
type Opener func(ctx context.Context, u *url.URL) (Backend, error)

var (
	// ErrUnknownScheme is matched by the error of [Open] for a URL whose
	// scheme no imported backend registered.
	ErrUnknownScheme = errors.New("lock: unknown URL scheme")
	// ErrInvalidURL is matched by the error of [Open] for a URL it cannot
	// parse or that the backend rejects.
	ErrInvalidURL = errors.New("lock: invalid URL")
)

var registry = struct {
	sync.RWMutex
	openers map[string]Opener
}{openers: map[string]Opener{}}

// Register makes a backend available to [Open] under a URL scheme (case
// insensitive). Backends call it from an init function, so importing a
// backend package, if only for its side effect, is what makes its scheme
// work. Like database/sql's Register it panics if the scheme is empty, the
// opener nil, or the scheme already registered: those are programming
// errors found at start-up.
func Register(scheme string, open Opener) {
	scheme = strings.ToLower(scheme)
	if scheme == "" || open == nil {
		panic("lock: Register with an empty scheme or a nil Opener")
	}
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.openers[scheme]; dup {
		panic("lock: Register called twice for scheme " + scheme)
	}
	registry.openers[scheme] = open
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	registry.RLock()
	defer registry.RUnlock()
	out := make([]string, 0, len(registry.openers))
	for s := range registry.openers {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Open returns the Backend a URL names, for example "mem://",
// "redis://127.0.0.1:6379/0" or "etcd://127.0.0.1:2379". The backend's
// package must be imported (import _ "github.com/idemlock/lock/backends/memlock"
// for "mem://"); each documents its URL form. The caller closes the Backend.
//
// No built-in backend connects in Open or depends on ctx once Open returns
// (cancelling it afterwards changes nothing), so Open succeeds for a server
// that is down: check it with [Ping], which every built-in backend
// supports, for example in a readiness probe.
func Open(ctx context.Context, rawURL string) (Backend, error) {
	if err := CheckContext(ctx); err != nil {
		return nil, err
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidURL, err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("%w: %q has no scheme (want for example mem:// or redis://host:port)", ErrInvalidURL, u.Redacted())
	}
	registry.RLock()
	open := registry.openers[strings.ToLower(u.Scheme)]
	registry.RUnlock()
	if open == nil {
		return nil, fmt.Errorf("%w %q (registered: %s; is the backend package imported?)", ErrUnknownScheme, u.Scheme, strings.Join(Schemes(), ", "))
	}
	b, err := open(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("lock: open %s: %w", u.Redacted(), err)
	}
	return b, nil
}
