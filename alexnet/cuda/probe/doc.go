// Package probe checks, before anything else of a GPU build (tag gpu)
// starts, that CUDA can be used: its init calls cuInit and cuDeviceGetCount
// and, when either fails, prints one line saying what failed and what to do,
// and exits with status 2.
//
// gorgonia.org/cu's own init calls cuInit too, and on failure exits 1
// printing only a link. This package runs first because of Go's package
// initialisation order (a package's imports first, then the remaining
// packages sorted by import path): it imports only standard-library packages
// that cu imports as well (fmt, os; cgo's runtime/cgo), so whenever cu could
// be initialised this package could too, and its path
// (github.com/alexring/...) sorts before gorgonia.org/cu. Keep it that way:
// an import here that cu lacks could let cu run first. Package alexnet/cuda
// imports it.
//
// The check covers a host whose driver library (libcuda.so.1) is installed
// but that has no usable GPU. On a host without libcuda.so.1 at all, the
// dynamic loader refuses to start any GPU binary before Go runs, with its
// own message naming libcuda.so.1.
//
// The code is in probe.go, built with the tag gpu only; without it this
// package is empty and the default build needs no CUDA.
package probe
