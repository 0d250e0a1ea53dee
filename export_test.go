package lock

// BuildOptions lets tests measure what building Acquire's options costs.
func BuildOptions() { _, _ = buildOptions([]AcquireOption(nil), AcquireOption.applyAcquire) }

// LossMargin is lossMargin, how long before a lease's deadline KeepAlive
// declares it lost.
var LossMargin = lossMargin
