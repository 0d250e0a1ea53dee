// WithCodec is an option of one Do call, not of a Guard. Must not compile.
package main

import (
	"github.com/idemlock/lock/backends/memlock"
	"github.com/idemlock/lock/idempotency"
)

func main() {
	_, _ = idempotency.New(memlock.New(), idempotency.WithCodec(idempotency.JSON))
}
