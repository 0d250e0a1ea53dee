package observe_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/idemlock/lock/driver"
	"github.com/idemlock/lock/observe"
)

// A key longer than 64 bytes is named in the library's messages by its cut
// form, quoted (driver.DisplayKey with %q): where quoting escapes bytes of
// that cut (a quote, a backslash, a control character, or a multi-byte
// character split by the cut), the escaped cut is taken out as well.
func TestErrLongKeyEscapedCutRedacted(t *testing.T) {
	for name, key := range map[string]string{
		"quote":     `tenant "acme"/` + strings.Repeat("x", 70),
		"backslash": `C:\orders\` + strings.Repeat("x", 70),
		"newline":   "line\n" + strings.Repeat("x", 70),
		"split":     "a" + strings.Repeat("é", 40), // the cut ends inside an é
	} {
		cause := &driver.Error{Backend: "test", Op: "take", Key: key, Err: errors.New("boom")}
		var got error
		s := observe.NewScope(observe.Func(func(_ context.Context, e observe.Event) { got = e.Err }), "test")
		s.Emit(t.Context(), key, observe.Event{Kind: observe.KindRelease, Err: cause})
		if want := `test: take "<key>…": boom`; got.Error() != want {
			t.Errorf("%s: message %q, want %q", name, got.Error(), want)
		}
	}
}

// An error that does not name the key is reported as it is, with no
// allocation for a key that quoting leaves alone.
func TestErrKeyAbsentNoAlloc(t *testing.T) {
	cause := errors.New("memcachedlock: take: connection refused")
	var got error
	s := observe.NewScope(observe.Func(func(_ context.Context, e observe.Event) { got = e.Err }), "test")
	ctx := context.Background()
	n := testing.AllocsPerRun(100, func() {
		s.Emit(ctx, "orders/12345", observe.Event{Kind: observe.KindRelease, Err: cause})
	})
	if got != cause {
		t.Errorf("Err = %v, want the cause itself", got)
	}
	if n != 0 {
		t.Errorf("Emit of an error without the key: %v allocations, want 0", n)
	}
}
