//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package atomicfile

import (
	"errors"
	"os"
	"syscall"
)

// renameOpen: a file may be renamed while open.
const renameOpen = true

// lock takes f's exclusive lock, waiting for a Sweep that holds it for a
// moment; the lock goes with the process, so a killed writer's is free.
func lock(f *os.File) {
	for {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); !errors.Is(err, syscall.EINTR) {
			return
		}
	}
}

func tryLock(f *os.File) lockState {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return lockFree
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return lockHeld
		}
		return lockUnsupported
	}
}
