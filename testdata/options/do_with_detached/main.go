// Do's renewal ends with its function, so WithDetached does not apply. Must
// not compile.
package main

import (
	"context"

	"github.com/idemlock/lock"
	"github.com/idemlock/lock/backends/memlock"
)

func main() {
	_ = lock.Do(context.Background(), memlock.New(), "k", func(context.Context, lock.Lease) error { return nil }, lock.WithDetached())
}
