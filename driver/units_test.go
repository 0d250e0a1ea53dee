package driver_test

import (
	"math"
	"testing"
	"time"

	"github.com/idemlock/lock/driver"
)

func TestCeilAndUnits(t *testing.T) {
	for _, c := range []struct {
		d, unit time.Duration
		want    int64
	}{
		{time.Millisecond, time.Millisecond, 1},
		{time.Millisecond + 1, time.Millisecond, 2},
		{1, time.Millisecond, 1},
		{0, time.Millisecond, 0},
		{-time.Second, time.Millisecond, 0},
		{1500 * time.Nanosecond, time.Microsecond, 2},
		{math.MaxInt64, time.Millisecond, math.MaxInt64/int64(time.Millisecond) + 1},
	} {
		if got := driver.Ceil(c.d, c.unit); got != c.want {
			t.Errorf("Ceil(%v, %v) = %d, want %d", c.d, c.unit, got, c.want)
		}
	}
	for _, c := range []struct {
		n    int64
		unit time.Duration
		want time.Duration
	}{
		{5, time.Millisecond, 5 * time.Millisecond},
		{0, time.Millisecond, 0},
		{-3, time.Millisecond, 0},
		{math.MaxInt64 / int64(time.Millisecond), time.Millisecond, time.Duration(math.MaxInt64/int64(time.Millisecond)) * time.Millisecond},
		{math.MaxInt64/int64(time.Millisecond) + 1, time.Millisecond, math.MaxInt64},
		{math.MaxInt64, time.Microsecond, math.MaxInt64},
	} {
		if got := driver.Units(c.n, c.unit); got != c.want {
			t.Errorf("Units(%d, %v) = %v, want %v", c.n, c.unit, got, c.want)
		}
	}
}
