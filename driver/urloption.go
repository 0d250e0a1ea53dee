package driver

import (
	"strings"

	"github.com/idemlock/lock"
)

// ParseOption reads option name of a backend's URL, if the URL gives it:
// parse turns its text into a value (strconv.Atoi, time.ParseDuration,
// [Text]) and with turns the value into one of the backend's options (a
// func(*C) error, as [Apply] takes), which is appended to opts. The option
// is checked at once, by applying it to a zero C, so that a URL with a bad
// value is refused by the URL parser, without connecting. A value parse
// rejects, or that the option rejects, is an error matching
// [lock.ErrInvalidURL] (and, for the option's, whatever its error matches)
// that names the option.
//
//	var opts []Option
//	err := errors.Join(
//		driver.ParseOption(q, &opts, "prefix", driver.Text, WithPrefix),
//		driver.ParseOption(q, &opts, "timeout", time.ParseDuration, WithTimeout),
//	)
func ParseOption[C any, O ~func(*C) error, V any](q *Query, opts *[]O, name string, parse func(string) (V, error), with func(V) O) error {
	s, err := q.String(name, "")
	if err != nil || !q.Has(name) {
		return err
	}
	v, err := parse(s)
	if err != nil {
		return q.name.URLError("%s=%q is not valid: %v", name, s, err)
	}
	o := with(v)
	if err := o(new(C)); err != nil {
		why := strings.TrimPrefix(err.Error(), string(q.name)+": ")
		return &sentinelError{msg: string(q.name) + ": " + name + ": " + why, errs: []error{lock.ErrInvalidURL, err}}
	}
	*opts = append(*opts, o)
	return nil
}

// Text is the parse function of [ParseOption] for an option whose value
// is its text.
func Text(s string) (string, error) { return s, nil }

// ParseFlag reads the boolean option name of a backend's URL (as
// strconv.ParseBool reads it: true, 1, false, 0) and appends with() to opts
// when it is true, as for queue=true and WithQueue. A value that is not a
// boolean is an error matching [lock.ErrInvalidURL] that names the option.
func ParseFlag[O any](q *Query, opts *[]O, name string, with func() O) error {
	on, err := q.Bool(name, false)
	if err != nil || !on {
		return err
	}
	*opts = append(*opts, with())
	return nil
}
