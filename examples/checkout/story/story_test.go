package story_test

import (
	"bytes"
	"strings"
	"testing"

	_ "github.com/idemlock/lock/backends/memlock" // mem://
	"github.com/idemlock/lock/examples/checkout/story"
)

func TestStory(t *testing.T) {
	var out bytes.Buffer
	if code := story.Run("mem://", false, &out); code != 0 {
		t.Fatalf("exit %d:\n%s", code, &out)
	}
	for _, want := range []string{"OK: exactly one charge per key", "409 Conflict", "422 Unprocessable Entity", "502 Bad Gateway", "replayed", "client gave up", "Slower than the lease"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, &out)
		}
	}
}

func TestStoryBadBackend(t *testing.T) {
	var out bytes.Buffer
	if code := story.Run("nosuch://x", false, &out); code == 0 {
		t.Fatalf("an unknown scheme exited 0:\n%s", &out)
	}
}
