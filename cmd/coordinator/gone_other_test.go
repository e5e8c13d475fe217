//go:build !linux

package main

import "time"

// waitGone waits until pid has exited, at most until deadline.
func waitGone(pid int, deadline time.Time) bool { return pollGone(pid, deadline) }
