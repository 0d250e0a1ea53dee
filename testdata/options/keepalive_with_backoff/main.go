// KeepAlive never waits for a key, so backoff does not apply. Must not compile.
package main

import (
	"context"
	"time"

	"github.com/idemlock/lock"
)

func main() {
	var le lock.Lease
	_, _ = lock.KeepAlive(context.Background(), le, time.Second, lock.WithBackoff(time.Millisecond, time.Second))
}
