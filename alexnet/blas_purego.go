//go:build purego

package alexnet

// BLAS names the BLAS the graphs multiply with: gonum's pure Go, for builds
// without cgo or OpenBLAS (build tag purego).
const BLAS = "gonum"
