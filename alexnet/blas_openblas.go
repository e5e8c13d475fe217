//go:build !purego

package alexnet

// #cgo LDFLAGS: -lopenblas
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
func init() { G.Use(netlib.Implementation{}) }
