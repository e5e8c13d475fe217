//go:build amd64 && !purego

package allreduce

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// useSIMD says whether the ring's inner loops run in vector_amd64.s: AVX for
// 8 floats an instruction, F16C for the half-float conversions. Tests turn it
// off to compare with the portable loops.
var useSIMD = cpu.X86.HasAVX && cpu.X86.HasF16C

//go:noescape
func addFloats8(dst, src *float32, n int)

//go:noescape
func putHalves8(dst *byte, src *float32, n int)

//go:noescape
func addHalves8(dst *float32, src *byte, n int)

//go:noescape
func copyHalves8(dst *float32, src *byte, n int)

//go:noescape
func roundToHalves8(v *float32, n int)

// Each wrapper does the leading whole groups of 8 values, when it may, and
// says how many it did; the caller's portable loop does the rest.

// simdPart is how many of n values the assembly does.
func simdPart(n int) int {
	if !useSIMD {
		return 0
	}
	return n &^ 7
}

func addFloatsSIMD(dst, src []float32) int {
	n := simdPart(len(src))
	if n > 0 {
		addFloats8(unsafe.SliceData(dst[:n]), unsafe.SliceData(src), n)
	}
	return n
}

func putHalvesSIMD(dst []byte, src []float32) int {
	n := simdPart(len(src))
	if n > 0 {
		putHalves8(unsafe.SliceData(dst[:2*n]), unsafe.SliceData(src), n)
	}
	return n
}

func halvesIntoSIMD(dst []float32, src []byte, reduce bool) int {
	n := simdPart(len(dst))
	switch {
	case n > 0 && reduce:
		addHalves8(unsafe.SliceData(dst), unsafe.SliceData(src[:2*n]), n)
	case n > 0:
		copyHalves8(unsafe.SliceData(dst), unsafe.SliceData(src[:2*n]), n)
	}
	return n
}

func roundToHalvesSIMD(v []float32) int {
	n := simdPart(len(v))
	if n > 0 {
		roundToHalves8(unsafe.SliceData(v), n)
	}
	return n
}
