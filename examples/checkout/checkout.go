// Command checkout tells idemlock's story end to end: a checkout endpoint
// whose handler charges a card, behind the idempotency middleware, and a
// client that behaves like real users and networks do — it double-clicks,
// fires a burst, times out and retries, gives up on a charge that takes
// longer than the key's lease, retries with a changed cart, and hits a
// failing payment provider. It prints what happened and checks that every
// key was charged exactly once. The story is in package story.
//
//	go run ./examples/checkout                          # embedded mem:// backend
//
// This command imports memlock only, so it runs from the repository root
// with no server and no client library. The same story on a real server
// runs from the integration module, which imports every backend:
//
//	cd internal/integration
//	go run ./cmd/checkout -backend redis://127.0.0.1:6379/0
//	go run ./cmd/checkout -backend etcd://127.0.0.1:2379
//	go run ./cmd/checkout -backend consul://127.0.0.1:8500
//	go run ./cmd/checkout -backend memcached://127.0.0.1:11211
//
// The exit status is 1 if any key was charged other than once.
package main

import (
	// memlock registers the mem:// scheme for lock.Open.
	_ "github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/examples/checkout/story"
)

func main() { story.Main() }
