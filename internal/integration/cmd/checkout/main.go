// Command checkout is examples/checkout with every backend imported: it
// tells the same story on a real server.
//
//	go run ./cmd/checkout -backend redis://127.0.0.1:6379/0
//	go run ./cmd/checkout -backend etcd://127.0.0.1:2379
//	go run ./cmd/checkout -backend consul://127.0.0.1:8500
//	go run ./cmd/checkout -backend memcached://127.0.0.1:11211
//
// The exit status is 1 if any key was charged other than once.
package main

import (
	"github.com/idemlock/lock/examples/checkout/story"

	// Each backend registers its URL scheme for lock.Open.
	_ "github.com/idemlock/lock/backends/consullock"
	_ "github.com/idemlock/lock/backends/etcdlock"
	_ "github.com/idemlock/lock/backends/memcachedlock"
	_ "github.com/idemlock/lock/backends/memlock"
	_ "github.com/idemlock/lock/backends/redislock"
)

func main() { story.Main() }
