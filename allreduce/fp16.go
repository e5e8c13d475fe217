package allreduce

import (
	"math"
	"sync"
)

// toHalf converts a float32 to IEEE 754 binary16, rounding to nearest even,
// with overflow to infinity and gradual underflow, as a GPU's conversion does.
// On amd64 the whole-vector loops run in F16C assembly (vector_amd64.s), which
// gives these bits; the portable loops (putHalves, roundToHalves) take the
// common case, a normal half, inline.
func toHalf(f float32) uint16 {
	b := math.Float32bits(f)
	if isNormalHalf(b) {
		return normalHalf(b)
	}
	return toHalfRare(b)
}

// isNormalHalf says whether the float32 with bits b rounds to a normal half
// (or just past the largest, to infinity): its exponent is within a half's.
func isNormalHalf(b uint32) bool { return (b>>23)&0xff-113 < 30 } // unsigned: smaller exponents wrap above 30

// normalHalf is toHalf for bits b with isNormalHalf: re-bias the exponent,
// then round the 13 dropped bits to nearest even by adding just under half of
// them plus the kept lowest bit; a carry runs into the exponent, up to
// infinity, as it should.
func normalHalf(b uint32) uint16 {
	x := b&0x7fffffff - 112<<23
	return uint16(b>>16)&0x8000 | uint16((x+0xfff+((x>>13)&1))>>13)
}

// putHalves writes src into dst as little-endian half floats.
func putHalves(dst []byte, src []float32) {
	dst = dst[:2*len(src)]
	for i := putHalvesSIMD(dst, src); i < len(src); i++ {
		b := math.Float32bits(src[i])
		var h uint16
		if isNormalHalf(b) {
			h = normalHalf(b)
		} else {
			h = toHalfRare(b)
		}
		dst[2*i], dst[2*i+1] = byte(h), byte(h>>8)
	}
}

// roundToHalves rounds every value of v to the nearest half float's value.
func roundToHalves(v []float32) {
	table := halfTable()
	for i := roundToHalvesSIMD(v); i < len(v); i++ {
		if b := math.Float32bits(v[i]); isNormalHalf(b) {
			v[i] = table[normalHalf(b)]
		} else {
			v[i] = table[toHalfRare(b)]
		}
	}
}

// toHalfRare converts the float32 with bits b that are no normal half:
// zeros, subnormals, overflows, infinities and NaNs.
func toHalfRare(b uint32) uint16 {
	sign := uint16(b>>16) & 0x8000
	exp := int((b >> 23) & 0xff)
	mant := b & 0x7fffff
	if exp == 0xff { // Inf or NaN
		if mant != 0 {
			// A quiet NaN with the payload's top bits, as F16C and GPUs make it.
			return sign | 0x7e00 | uint16(mant>>13)
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint32(14 - e)
		half := mant >> shift
		rem := mant & (1<<shift - 1)
		mid := uint32(1) << (shift - 1)
		if rem > mid || (rem == mid && half&1 == 1) {
			half++
		}
		return sign | uint16(half)
	}
	half := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && half&1 == 1) {
		half++ // may carry into the exponent, up to infinity: still right
	}
	return sign | uint16(half)
}

// halfTable holds every half float's value, built on first use (256 KiB).
var halfTable = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for h := range t {
		t[h] = decodeHalf(uint16(h))
	}
	return &t
})

// decodeHalf converts IEEE 754 binary16 to float32 (exactly).
func decodeHalf(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f && mant == 0:
		return math.Float32frombits(sign | 0x7f800000)
	case exp == 0x1f: // a NaN, made quiet as F16C does
		return math.Float32frombits(sign | 0x7fc00000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal: normalise.
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}
