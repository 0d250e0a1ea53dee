//go:build !linux

package torture

import "time"

var processStart = time.Now()

// systemMono counts from this process's start: without a clock shared by
// all processes, runs stay within one process (see sharedClock).
func systemMono() int64 { return int64(time.Since(processStart)) }

// sharedClock reports whether timestamps of worker processes compare with
// the coordinator's.
const sharedClock = false
