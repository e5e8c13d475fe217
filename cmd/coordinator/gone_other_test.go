//go:build !linux

package main

import "time"

// waitGone waits until pid has exited, at most until deadline.
func waitGone(pid int, deadline time.Time) bool {
	for !processGone(pid) && time.Now().Before(deadline) {
		// Stays: without Linux's pidfd, a process that is not our child
		// gives no event when it exits.
		time.Sleep(20 * time.Millisecond)
	}
	return processGone(pid)
}
