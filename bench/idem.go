package bench

import (
	"context"
	"errors"

	"github.com/idemlock/lock"
)

// idemClient drives any idemlock Locker: TryAcquire for one attempt,
// lock.Acquire (event-driven where the backend can notify, polling
// otherwise) for waiting.
type idemClient struct{ l lock.Locker }

func (c idemClient) Try(ctx context.Context, key string) (Held, bool, error) {
	le, err := c.l.TryAcquire(ctx, key, TTL)
	switch {
	case err == nil:
		return le, true, nil
	case errors.Is(err, lock.ErrNotAcquired):
		return nil, false, nil
	}
	return nil, false, err
}

func (c idemClient) Lock(ctx context.Context, key string) (Held, error) {
	le, err := lock.Acquire(ctx, c.l, key, TTL)
	if err != nil {
		return nil, err
	}
	return le, nil
}
