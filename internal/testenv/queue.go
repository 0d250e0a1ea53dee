package testenv

import (
	"errors"
	"net/url"
	"testing"

	"github.com/idemlock/lock"
)

// CheckQueueURL checks a backend's URL flag for queued waiting: the
// backend opened from rawURL waits unqueued (its Queue matches
// errors.ErrUnsupported), the one opened with name=true added queues (its
// Queue returns a ticket, closed before it queues), and
// name=maybe is refused with an error matching lock.ErrInvalidURL.
func CheckQueueURL(t testing.TB, rawURL, name string) {
	t.Helper()
	ctx := t.Context()
	with := func(v string) string {
		u, err := url.Parse(rawURL)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set(name, v)
		u.RawQuery = q.Encode()
		return u.String()
	}
	for _, tc := range []struct {
		url    string
		queued bool
	}{{rawURL, false}, {with("true"), true}, {with("0"), false}} {
		b, err := lock.Open(ctx, tc.url)
		if err != nil {
			t.Fatalf("Open(%q): %v", tc.url, err)
		}
		qr, ok := b.(lock.Queuer)
		if !ok {
			_ = b.Close()
			t.Fatalf("the backend %T opened from %q is not a lock.Queuer", b, tc.url)
		}
		tk, err := qr.Queue(ctx, "queue-url")
		switch {
		case tc.queued && err != nil:
			t.Errorf("Queue on the backend opened from %q: %v, want a ticket", tc.url, err)
		case !tc.queued && !errors.Is(err, errors.ErrUnsupported):
			t.Errorf("Queue on the backend opened from %q: %v, want an error matching errors.ErrUnsupported", tc.url, err)
		}
		if tk != nil {
			if err := tk.Close(); err != nil {
				t.Errorf("closing a ticket that never queued: %v", err)
			}
		}
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	if b, err := lock.Open(ctx, with("maybe")); !errors.Is(err, lock.ErrInvalidURL) {
		if err == nil {
			_ = b.Close()
		}
		t.Errorf("Open with %s=maybe: %v, want an error matching lock.ErrInvalidURL", name, err)
	}
}
