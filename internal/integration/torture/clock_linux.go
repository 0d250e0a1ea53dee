package torture

import "golang.org/x/sys/unix"

// systemMono reads CLOCK_MONOTONIC, which every process on the machine
// shares.
func systemMono() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("torture: clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return ts.Nano()
}

// sharedClock reports whether timestamps of worker processes compare with
// the coordinator's.
const sharedClock = true
