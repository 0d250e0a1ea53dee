package torture

import "time"

// Clock gives timestamps in nanoseconds since an epoch that every process of
// one run shares. The epoch is a reading of the system's monotonic clock
// (CLOCK_MONOTONIC on Linux), which all processes on a machine see alike, so
// a worker process's timestamps compare with the coordinator's; between two
// readings of that clock the Go runtime's own monotonic clock (the same
// source, read without a system call) counts.
type Clock struct {
	epoch  int64     // the shared epoch, a system monotonic reading
	base   time.Time // a local reading taken at systemMono() == epoch+offset
	offset int64
}

// NewClock returns a Clock whose epoch is now.
func NewClock() *Clock {
	c := ClockAt(0)
	c.epoch, c.offset = c.epoch+c.offset, 0
	return c
}

// ClockAt returns a Clock for an epoch read by another process with
// [Clock.Epoch].
func ClockAt(epoch int64) *Clock {
	before := systemMono()
	base := time.Now()
	after := systemMono()
	return &Clock{epoch: epoch, base: base, offset: before + (after-before)/2 - epoch}
}

// Epoch returns the epoch, to pass to [ClockAt] in another process.
func (c *Clock) Epoch() int64 { return c.epoch }

// Now returns the nanoseconds since the epoch.
func (c *Clock) Now() int64 { return c.offset + int64(time.Since(c.base)) }

// Time returns the local time.Time of a timestamp of this Clock.
func (c *Clock) Time(ts int64) time.Time { return c.base.Add(time.Duration(ts - c.offset)) }
