//go:build !purego

package alexnet

// #cgo LDFLAGS: -lopenblas -ldl
// #define _GNU_SOURCE
// #include <dlfcn.h>
// #include <stdlib.h>
//
// void openblas_set_num_threads(int num_threads);
// char *openblas_get_corename(void);
//
// // stopThreads ends the threads OpenBLAS's constructor started: idle, they
// // spin in sched_yield for about 2^28 cycles before they sleep, which took a
// // third of a 2-core machine's time in a 50 ms predict. 0 when this
// // OpenBLAS does not export blas_thread_shutdown_.
// static int stopThreads(void) {
// 	int (*shutdown)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "blas_thread_shutdown_");
// 	if (shutdown == NULL) return 0;
// 	shutdown();
// 	return 1;
// }
//
// // setCore makes a DYNAMIC_ARCH OpenBLAS choose its kernels again, as its
// // constructor does, with OPENBLAS_CORETYPE=core for the choice only. 0 when
// // this OpenBLAS has no gotoblas_dynamic_init (a build for one core).
// static int setCore(const char *core) {
// 	void (*quit)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit");
// 	void (*init)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init");
// 	if (quit == NULL || init == NULL) return 0;
// 	setenv("OPENBLAS_CORETYPE", core, 1);
// 	quit();
// 	init();
// 	unsetenv("OPENBLAS_CORETYPE");
// 	return 1;
// }
import "C"

import (
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/cpu"
	"gonum.org/v1/netlib/blas/netlib"
	G "gorgonia.org/gorgonia"
)

// BLAS names the BLAS the graphs multiply with and its kernels' core, for
// the logs: "openblas SkylakeX".
var BLAS = setUpOpenBLAS()

// BLASCoreNote says why OpenBLAS runs the core BLAS names when this package
// chose it ("" when OpenBLAS chose, or the user did with OPENBLAS_CORETYPE):
// the worker's "model ready" line and bench step print it, so that a run's
// figures say their kernels were this package's pick, not OpenBLAS's.
var BLASCoreNote string

// sgemm is the BLAS the custom ops call directly.
var sgemm = netlib.Implementation{}.Sgemm

// OpenBLAS through cgo is 1.8x (batch 8) to 2.4x (batch 32) faster than gonum's
// pure-Go BLAS on this model; G.Use also sets the tensor package's BLAS.
//
// OpenBLAS's own threads spin while they wait and measured no faster than one
// thread on this model; the ops split their work over goroutines instead
// (parallel.go), each calling a single-threaded sgemm. They run before any
// BLAS call: package variables are set before init.
func setUpOpenBLAS() string {
	C.openblas_set_num_threads(1)
	C.stopThreads()
	if _, set := os.LookupEnv("OPENBLAS_CORETYPE"); !set {
		if want, why := betterCore(C.GoString(C.openblas_get_corename())); want != "" {
			core := C.CString(want)
			if C.setCore(core) != 0 {
				BLASCoreNote = why
			}
			C.free(unsafe.Pointer(core))
		}
	}
	G.Use(netlib.Implementation{})
	return "openblas " + C.GoString(C.openblas_get_corename())
}

// betterCore is the OPENBLAS_CORETYPE for this CPU when OpenBLAS took it
// for its fallback, Prescott (SSE3): OpenBLAS 0.3.21, Debian 12's, does not
// know CPUs newer than itself (Emerald Rapids, family 6 model 207), and its
// Prescott kernels made a training step 2.6x slower than SkylakeX's there.
// Empty when OpenBLAS's own choice stands.
func betterCore(current string) (core, why string) {
	if runtime.GOARCH != "amd64" || current != "Prescott" {
		return "", ""
	}
	x := cpu.X86 // what the OS enables, too (XCR0)
	switch {
	case x.HasAVX512F && x.HasAVX512CD && x.HasAVX512BW && x.HasAVX512DQ && x.HasAVX512VL:
		return "SkylakeX", "OpenBLAS took this CPU for Prescott; it has AVX-512"
	case x.HasAVX2 && x.HasFMA:
		return "Haswell", "OpenBLAS took this CPU for Prescott; it has AVX2"
	case x.HasAVX:
		return "Sandybridge", "OpenBLAS took this CPU for Prescott; it has AVX"
	}
	return "", ""
}
