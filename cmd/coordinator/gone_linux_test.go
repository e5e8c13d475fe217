//go:build linux

package main

import (
	"time"

	"golang.org/x/sys/unix"
)

// waitGone waits until pid has exited (a zombie nobody reaped has), at most
// until deadline: on its pidfd, which turns readable when it exits.
func waitGone(pid int, deadline time.Time) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err == unix.ESRCH {
		return true // gone already
	}
	if err != nil { // a kernel without pidfd_open (before 5.3)
		return pollGone(pid, deadline)
	}
	defer unix.Close(fd)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, max(0, int(time.Until(deadline).Milliseconds()))) // a negative timeout would wait forever
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}
