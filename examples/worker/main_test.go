package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestWorkerStory(t *testing.T) {
	var out bytes.Buffer
	if code := run("mem://", &out); code != 0 {
		t.Fatalf("exit %d:\n%s", code, &out)
	}
	if !strings.Contains(out.String(), "OK: every message's email was sent exactly once") {
		t.Fatalf("report:\n%s", &out)
	}
}
