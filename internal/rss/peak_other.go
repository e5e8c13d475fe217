//go:build !(linux || darwin || ios || freebsd || netbsd || openbsd || dragonfly)

package rss

// peak is unknown here: Windows has no getrusage, and the other Unixes'
// maxrss units differ (pages on Solaris).
func peak() int64 { return 0 }
