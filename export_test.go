package lock

// BuildOptions lets tests measure what building Acquire's options costs.
func BuildOptions() { _, _ = buildOptions([]AcquireOption(nil), AcquireOption.applyAcquire) }
