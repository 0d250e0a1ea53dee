package driver

import (
	"math"
	"time"
)

// Ceil converts d to whole units (time.Millisecond for a Redis PX, a
// microsecond for a database interval), rounding up, so that a server never
// holds a lock for less than the TTL asked. A non-positive d gives 0.
func Ceil(d, unit time.Duration) int64 {
	if d <= 0 || unit <= 0 {
		return 0
	}
	n := int64(d / unit)
	if d%unit != 0 {
		n++
	}
	return n
}

// Units converts n units from the server back to a Duration, saturating
// at the longest Duration instead of overflowing; a non-positive n gives 0.
func Units(n int64, unit time.Duration) time.Duration {
	if n <= 0 || unit <= 0 {
		return 0
	}
	if n > math.MaxInt64/int64(unit) {
		return math.MaxInt64
	}
	return time.Duration(n) * unit
}
