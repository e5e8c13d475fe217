package main

import "time"

// pollGone is waitGone where no event tells a process's exit.
func pollGone(pid int, deadline time.Time) bool {
	for !processGone(pid) && time.Now().Before(deadline) {
		// Stays: without Linux's pidfd, a process that is not our child
		// gives no event when it exits.
		time.Sleep(20 * time.Millisecond)
	}
	return processGone(pid)
}
