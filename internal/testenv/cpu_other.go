//go:build !linux

package testenv

import "time"

// ProcessCPU is not measured on this platform: it returns zero, and
// benchmarks then report no CPU time.
func ProcessCPU() time.Duration { return 0 }
