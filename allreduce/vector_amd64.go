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

// Each wrapper handles the leading whole groups of 8 values, when it may, and
// says how many it did; the caller's portable loop does the rest.

func addFloatsSIMD(dst, src []float32) int {
	n := len(src) &^ 7
	if !useSIMD || n == 0 {
		return 0
	}
	addFloats8(unsafe.SliceData(dst[:n]), unsafe.SliceData(src), n)
	return n
}

func putHalvesSIMD(dst []byte, src []float32) int {
	n := len(src) &^ 7
	if !useSIMD || n == 0 {
		return 0
	}
	putHalves8(unsafe.SliceData(dst[:2*n]), unsafe.SliceData(src), n)
	return n
}

func halvesIntoSIMD(dst []float32, src []byte, reduce bool) int {
	n := len(dst) &^ 7
	if !useSIMD || n == 0 {
		return 0
	}
	d, s := unsafe.SliceData(dst), unsafe.SliceData(src[:2*n])
	if reduce {
		addHalves8(d, s, n)
	} else {
		copyHalves8(d, s, n)
	}
	return n
}

func roundToHalvesSIMD(v []float32) int {
	n := len(v) &^ 7
	if !useSIMD || n == 0 {
		return 0
	}
	roundToHalves8(unsafe.SliceData(v), n)
	return n
}
