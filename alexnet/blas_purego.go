//go:build purego

package alexnet

import "gonum.org/v1/gonum/blas/gonum"

// BLAS names the BLAS the graphs multiply with: gonum's pure Go, for builds
// without cgo or OpenBLAS (build tag purego).
var BLAS = "gonum"

// BLASCoreNote is empty: gonum has no cores to choose.
var BLASCoreNote string

// sgemm is the BLAS the custom ops call directly.
var sgemm = gonum.Implementation{}.Sgemm
