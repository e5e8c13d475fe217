//go:build cgo && !purego

package kernels

// The host build of the kernels (host.c): the same bodies as the PTX's,
// compiled without contraction of multiply-adds, as -fmad=false compiles them
// for the device: -std=c11 is GCC's -ffp-contract=off (which cgo does not
// allow in #cgo lines), see host.c.

/*
#cgo CFLAGS: -O2 -std=c11
#cgo LDFLAGS: -lm
#include <stdint.h>
int kernels_count(void);
const char *kernels_name(int k);
int kernels_nargs(int k);
void kernels_run(int k, int64_t n, const uint64_t *args, int64_t grid, int64_t block);
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// hostKernel is one entry of host.c's table.
type hostKernel struct {
	id, nargs int
}

var (
	names  []string // in doc.go's order
	byName = map[string]hostKernel{}
)

func init() {
	for k := range int(C.kernels_count()) {
		name := C.GoString(C.kernels_name(C.int(k)))
		names = append(names, name)
		byName[name] = hostKernel{id: k, nargs: int(C.kernels_nargs(C.int(k)))}
	}
}

// Names lists the kernels, in doc.go's order: the entries the PTX holds.
func Names() []string { return append([]string(nil), names...) }

// Launch runs kernel name on the CPU over n items with args, each the 8 bytes
// a device launch passes: a C address (as uintptr), an int64, or a float64's
// bits (math.Float64bits). The items are visited as the device's grid-stride
// loops visit them with Geometry(n)'s grid and block. The pointers must be
// memory C may write (C heap, or pinned Go memory) covering what the kernel
// touches; nothing here can check that (package hostdev does).
func Launch(name string, n int64, args []uint64) error {
	grid, block := Geometry(n)
	return launch(name, n, args, grid, block)
}

// launch is Launch with a given grid and block (the tests use small grids to
// run the stride loop).
func launch(name string, n int64, args []uint64, grid, block int) error {
	k, ok := byName[name]
	if !ok {
		return fmt.Errorf("kernels: no kernel %q (have %v)", name, names)
	}
	if len(args) != k.nargs {
		return fmt.Errorf("kernels: %s takes %d arguments after n, given %d", name, k.nargs, len(args))
	}
	if n > 0 && (grid < 1 || block < 1) {
		return fmt.Errorf("kernels: %s over %d items with grid %d and block %d", name, n, grid, block)
	}
	C.kernels_run(C.int(k.id), C.int64_t(n), (*C.uint64_t)(unsafe.Pointer(&args[0])), C.int64_t(grid), C.int64_t(block))
	return nil
}
