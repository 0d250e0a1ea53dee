package observe_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/idemlock/lock/observe"
)

// An event's Err has its key taken out: quoted, whole or cut, each
// replaced once, never inside a replacement, and a short key never inside
// a longer word or number; the error still unwraps to the original.
func TestErrKeyRedacted(t *testing.T) {
	long := strings.Repeat("secret-", 12) // 84 bytes
	for _, tc := range []struct{ key, msg, want string }{
		{"k", `lock: key "k" lost: lock: lease not held`, `lock: key <key> lost: lock: lease not held`},
		{"42", `order 42 got status 429 (key "42")`, `order <key> got status 429 (key <key>)`},
		{"user@example.com", `claim user@example.com: timeout`, `claim <key>: timeout`},
		{"abcdefgh", `xabcdefghy`, `x<key>y`},
		{long, fmt.Sprintf("take %q: boom", long[:64]+"…"), `take "<key>…": boom`},
		{"k", `no key here`, `no key here`},
	} {
		cause := errors.New(tc.msg)
		var got error
		s := observe.NewScope(observe.Func(func(_ context.Context, e observe.Event) { got = e.Err }), "test")
		s.Emit(t.Context(), tc.key, observe.Event{Kind: observe.KindRelease, Err: cause})
		if got.Error() != tc.want {
			t.Errorf("key %q: message %q, want %q", tc.key, got.Error(), tc.want)
		}
		if !errors.Is(got, cause) {
			t.Errorf("key %q: the redacted error does not unwrap to the original", tc.key)
		}
	}
}
