package driver

import (
	"context"
	"errors"
	"fmt"
)

// OpErrorCtx is [Name.OpError] for a request made with ctx: when ctx has
// ended and err does not match ctx.Err() (a client library that reports
// the end of ctx as a broken stream or a status of its own), the result
// matches ctx.Err() too, so that a caller's errors.Is(err,
// context.DeadlineExceeded) sees why the request stopped. Its outcome is
// unknown all the same.
func (n Name) OpErrorCtx(ctx context.Context, op, key string, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w (%w)", cerr, err)
	}
	return n.OpError(op, key, err)
}
