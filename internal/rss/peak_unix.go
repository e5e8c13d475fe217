//go:build linux || darwin || ios || freebsd || netbsd || openbsd || dragonfly

package rss

import (
	"runtime"
	"syscall"
)

func peak() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	// maxrss is in KiB on Linux and the BSDs, in bytes on Apple's systems.
	unit := int64(1024)
	if runtime.GOOS == "darwin" || runtime.GOOS == "ios" {
		unit = 1
	}
	return int64(ru.Maxrss) * unit
}
