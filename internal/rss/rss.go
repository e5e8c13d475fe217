// Package rss reads the process's peak resident set size, the figure the
// worker's telemetry and the bench report.
package rss

// Peak is the most resident memory this process has held, in bytes
// (getrusage's maxrss: the kernel's high-water mark, what /usr/bin/time
// reports), or 0 where the system does not say. It counts what the Go heap
// figures leave out: C libraries' buffers, the code.
func Peak() int64 { return peak() }
