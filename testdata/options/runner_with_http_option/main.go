// A Runner has no HTTP layer, so WithHeader does not apply. Must not compile.
package main

import (
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

func main() {
	_, _ = idempotency.NewRunner(memlock.New(), idempotency.WithHeader("X-Key"))
}
