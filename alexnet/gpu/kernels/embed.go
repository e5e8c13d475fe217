package kernels

import (
	_ "embed"
	"fmt"
)

// The PTX is generated from kernels.cu by gen.sh and committed, so that a
// cuda build needs no nvcc; CI regenerates it and fails when it differs.
//
//go:generate bash gen.sh

//go:embed kernels_sm80.ptx
var ptxSM80 []byte

//go:embed kernels_sm90.ptx
var ptxSM90 []byte

// MinMajor is the oldest compute capability (MinMajor.0) the PTX targets:
// sm_80, Ampere.
const MinMajor = 8

// PTX returns the module for a device of compute capability major.minor: the
// sm_90 build for 9.0 and later (the driver JIT-compiles PTX for newer
// devices), the sm_80 one for 8.x, and an error below 8.0.
func PTX(major, minor int) (arch string, ptx []byte, err error) {
	switch {
	case major >= 9:
		return "sm_90", ptxSM90, nil
	case major >= MinMajor:
		return "sm_80", ptxSM80, nil
	}
	return "", nil, fmt.Errorf("kernels: device of compute capability %d.%d; the kernels need %d.0 or later", major, minor, MinMajor)
}
