package torture

import (
	"testing"
	"time"
)

// Two Clocks of one epoch, as two processes make them, agree to within a
// few microseconds.
func TestClockAt(t *testing.T) {
	a := NewClock()
	b := ClockAt(a.Epoch())
	for range 100 {
		x, y, z := a.Now(), b.Now(), a.Now()
		if y < x-int64(20*time.Microsecond) || y > z+int64(20*time.Microsecond) {
			t.Fatalf("clocks of one epoch disagree: a %v, b %v, a again %v", time.Duration(x), time.Duration(y), time.Duration(z))
		}
	}
}
