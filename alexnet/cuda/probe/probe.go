//go:build gpu

package probe

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>

// errorName is cuGetErrorName's answer, or "unknown" when it has none.
static const char *errorName(CUresult r) {
	const char *s = 0;
	if (cuGetErrorName(r, &s) != CUDA_SUCCESS || s == 0) {
		return "unknown";
	}
	return s;
}
*/
import "C"

import (
	"fmt"
	"os"
)

// ExitCode is the status a GPU binary exits with when CUDA cannot be used:
// 2, as for any other bad setting of the command.
const ExitCode = 2

var devices int

func init() {
	if r := C.cuInit(0); r != C.CUDA_SUCCESS {
		fail("cuInit", r)
	}
	var n C.int
	if r := C.cuDeviceGetCount(&n); r != C.CUDA_SUCCESS {
		fail("cuDeviceGetCount", r)
	}
	if n < 1 {
		fail("cuDeviceGetCount", C.CUDA_ERROR_NO_DEVICE)
	}
	devices = int(n)
}

// fail prints why CUDA cannot be used, on one line, and exits.
func fail(call string, r C.CUresult) {
	fmt.Fprintf(os.Stderr, "alexring: no usable CUDA device: %s failed: %s (%d). "+
		"This is a GPU build (-tags gpu): it needs an NVIDIA GPU and its driver; "+
		"a build without -tags gpu trains on the CPU.\n",
		call, C.GoString(C.errorName(r)), int(r))
	os.Exit(ExitCode)
}

// Devices is the number of CUDA devices (at least 1: init exits otherwise).
func Devices() int { return devices }
