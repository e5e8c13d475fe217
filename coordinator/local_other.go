//go:build !linux

package coordinator

import "syscall"

// childProcAttr: only Linux has a parent-death signal; elsewhere a worker
// outlives a killed coordinator until its next write to the closed pipe.
func childProcAttr() *syscall.SysProcAttr { return nil }
