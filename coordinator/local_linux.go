package coordinator

import "syscall"

// childProcAttr makes a local worker die with the coordinator (SIGKILL when
// the thread that started it exits): the job is over for it, and a worker left
// running would hold its name in the next coordinator's job.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
