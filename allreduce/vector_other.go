//go:build !amd64 || purego

package allreduce

// Elsewhere than amd64, or built purego, the portable loops do all the work.

var useSIMD = false

func addFloatsSIMD(dst, src []float32) int                      { return 0 }
func putHalvesSIMD(dst []byte, src []float32) int               { return 0 }
func halvesIntoSIMD(dst []float32, src []byte, reduce bool) int { return 0 }
func roundToHalvesSIMD(v []float32) int                         { return 0 }
