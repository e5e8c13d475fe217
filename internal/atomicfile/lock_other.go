//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package atomicfile

import "os"

// renameOpen: some systems (Windows) refuse to rename an open file.
const renameOpen = false

// Without flock, Sweep judges a temporary file by its age alone.
func lock(*os.File) {}

func tryLock(*os.File) lockState { return lockUnsupported }
