// Acquire takes no lease TTL option: the TTL is its argument. Must not compile.
package main

import (
	"context"
	"time"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
)

func main() {
	_, _ = lock.Acquire(context.Background(), memlock.New(), "k", time.Second, lock.WithTTL(time.Minute))
}
