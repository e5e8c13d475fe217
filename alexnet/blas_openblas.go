//go:build !purego

package alexnet

// #cgo LDFLAGS: -lopenblas
// void openblas_set_num_threads(int num_threads);
import "C"

import (
	"gonum.org/v1/netlib/blas/netlib"
	G "gorgonia.org/gorgonia"
)

// BLAS names the BLAS the graphs multiply with.
const BLAS = "openblas"

// sgemm is the BLAS the custom ops call directly.
var sgemm = netlib.Implementation{}.Sgemm

// OpenBLAS through cgo is 1.8x (batch 8) to 2.4x (batch 32) faster than gonum's
// pure-Go BLAS on this model; G.Use also sets the tensor package's BLAS.
//
// OpenBLAS's own threads spin while they wait and measured no faster than one
// thread on this model; the ops split their work over goroutines instead
// (parallel.go), each calling a single-threaded sgemm.
func init() {
	G.Use(netlib.Implementation{})
	C.openblas_set_num_threads(1)
}
