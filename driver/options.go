package driver

import "errors"

// Apply calls each non-nil option on c, in order, and returns every error
// they returned, joined (nil if none). A backend's options are functions
// that check their argument and report a bad one, so that New reports an
// invalid option once, at construction, instead of on every call:
//
//	type Option func(*config) error
//
//	func WithPrefix(p string) Option {
//		return func(c *config) error {
//			if strings.ContainsAny(p, "{}") {
//				return errs.InvalidArgument("prefix %q contains '{' or '}'", p)
//			}
//			c.prefix = p
//			return nil
//		}
//	}
//
//	func New(client *Client, opts ...Option) (*Locker, error) {
//		c := config{prefix: DefaultPrefix}
//		if err := driver.Apply(&c, opts); err != nil {
//			return nil, err
//		}
//		…
//	}
func Apply[C any, O ~func(*C) error](c *C, opts []O) error {
	var errs []error
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
