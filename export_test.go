package lock

// BuildOptions lets tests measure what building the helpers' options costs.
func BuildOptions() { _, _ = buildOptions(nil) }
