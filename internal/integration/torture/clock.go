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
//
// It ties the runtime's clock to the system's by reading the system's
// before and after one reading of the runtime's; a descheduled process can
// stretch that window to milliseconds, which would misorder operations of
// different processes, so it keeps the narrowest of many tries (about a
// microsecond).
func ClockAt(epoch int64) *Clock {
	c := &Clock{epoch: epoch}
	window := int64(-1)
	for range 200 {
		before := systemMono()
		base := time.Now()
		after := systemMono()
		if w := after - before; window < 0 || w < window {
			window, c.base, c.offset = w, base, before+w/2-epoch
		}
	}
	return c
}

// Epoch returns the epoch, to pass to [ClockAt] in another process.
func (c *Clock) Epoch() int64 { return c.epoch }

// Now returns the nanoseconds since the epoch.
func (c *Clock) Now() int64 { return c.offset + int64(time.Since(c.base)) }
