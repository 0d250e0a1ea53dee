package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/idemlock/lock/examples/checkout/story"
	"github.com/idemlock/lock/internal/testenv"
)

// The same story runs on every real backend, through lock.Open.
func TestStoryOnBackends(t *testing.T) {
	for _, tc := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"redis", func(t *testing.T) string { return "redis://" + testenv.RedisAddr(t) }},
		{"memcached", func(t *testing.T) string { return "memcached://" + testenv.MemcachedAddr(t) }},
		{"etcd", func(t *testing.T) string { return "etcd://" + hostPort(testenv.EtcdEndpoints(t)[0]) }},
		// The test agent's session_ttl_min is 1 s: the story's short lease.
		{"consul", func(t *testing.T) string { return "consul://" + testenv.ConsulAddr(t) + "?min_ttl=1s" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if code := story.Run(tc.url(t), false, &out); code != 0 {
				t.Fatalf("exit %d:\n%s", code, &out)
			}
		})
	}
}

// hostPort drops a scheme from an endpoint such as http://127.0.0.1:2379.
func hostPort(endpoint string) string {
	if _, rest, ok := strings.Cut(endpoint, "://"); ok {
		return rest
	}
	return endpoint
}
