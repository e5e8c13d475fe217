package allreduce

import (
	"math"
	"math/rand/v2"
	"testing"
)

// portable runs f with the assembly loops turned off.
func portable(f func()) {
	saved := useSIMD
	useSIMD = false
	defer func() { useSIMD = saved }()
	f()
}

// awkwardFloats are the values where a half conversion can go wrong: zeros,
// float32 and half subnormals, ties, the overflow edge, infinities, and NaNs
// quiet and signalling, with payloads high and low.
var awkwardFloats = []uint32{
	0, 0x80000000, 1, 0x007fffff, 0x00800000, // zeros, float32 subnormals
	0x33000000, 0x33000001, 0x337fffff, 0x33800000, 0x387fc000, 0x387fe000, 0x38800000, // around half subnormals
	0x3f801000, 0x3f803000, 0x3f800fff, 0x3f801001, // ties and near-ties at 1
	0x477fe000, 0x477fefff, 0x477ff000, 0x477fffff, 0x47800000, 0x7f7fffff, // 65504 up to overflow
	0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0x7fa00000, 0x7fbfffff, 0xffffe000, 0x7fc02000,
}

func floatsFromBits(bits []uint32) []float32 {
	v := make([]float32, len(bits))
	for i, b := range bits {
		v[i] = math.Float32frombits(b)
	}
	return v
}

// sweepFloats is every 997th float32 bit pattern, both signs, NaNs included,
// followed by the awkward ones.
func sweepFloats() []float32 {
	var bits []uint32
	for b := uint64(0); b < 1<<32; b += 997 {
		bits = append(bits, uint32(b))
	}
	return floatsFromBits(append(bits, awkwardFloats...))
}

func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: value %d is %#08x, the portable loop gives %#08x", what, i, math.Float32bits(got[i]), math.Float32bits(want[i]))
		}
	}
}

// The assembly loops must give the portable loops' bits exactly, NaNs
// included: ranks on different machines must agree to the bit.
func TestVectorLoopsMatchPortable(t *testing.T) {
	if !useSIMD {
		t.Skip("this CPU has no AVX and F16C: only the portable loops run")
	}
	sweep := sweepFloats()

	// Encoding: every sampled float, at each byte offset of the destination.
	for off := range 3 {
		got, want := make([]byte, off+2*len(sweep)), make([]byte, off+2*len(sweep))
		putHalves(got[off:], sweep)
		portable(func() { putHalves(want[off:], sweep) })
		for i := off; i < len(want); i += 2 {
			if got[i] != want[i] || got[i+1] != want[i+1] {
				j := (i - off) / 2
				t.Fatalf("putHalves(%#08x) = %#02x%02x, the portable loop gives %#02x%02x", math.Float32bits(sweep[j]), got[i+1], got[i], want[i+1], want[i])
			}
		}
	}

	// Rounding in place.
	got, want := append([]float32(nil), sweep...), append([]float32(nil), sweep...)
	roundToHalves(got)
	portable(func() { roundToHalves(want) })
	sameBits(t, "roundToHalves", got, want)

	// Decoding every half, copied and added, at odd byte offsets too.
	halves := make([]byte, 1+2<<16)
	for h := range 1 << 16 {
		halves[1+2*h], halves[2+2*h] = byte(h), byte(h>>8)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	base := make([]float32, 1<<16)
	for i := range base {
		base[i] = float32(rng.NormFloat64() * 1e3)
	}
	for _, reduce := range []bool{false, true} {
		for off := range 2 {
			got, want := append([]float32(nil), base...), append([]float32(nil), base...)
			combine(got, halves[off:][:2<<16], 2, reduce)
			portable(func() { combine(want, halves[off:][:2<<16], 2, reduce) })
			sameBits(t, "half decoding", got, want)
		}
	}

	// Adding float32s, every length up to 40 and a long one, at every offset.
	for _, n := range append([]int{60003}, rangeInts(41)...) {
		src := make([]float32, n+1)
		for i := range src {
			src[i] = float32(rng.NormFloat64())
		}
		copy(src, floatsFromBits(awkwardFloats))
		for off := range 4 {
			raw := leBytes32(src)[off:][:4*n]
			got, want := append([]float32(nil), base[:n]...), append([]float32(nil), base[:n]...)
			combine(got, raw, 4, true)
			portable(func() { combine(want, raw, 4, true) })
			sameBits(t, "float32 sums", got, want)
		}
	}
}

func rangeInts(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// BenchmarkVectorLoops compares the assembly loops with the portable ones on
// one 1 MiB chunk: go test -run X -bench VectorLoops ./allreduce
func BenchmarkVectorLoops(b *testing.B) {
	const n = 1 << 18
	dst, src := make([]float32, n), make([]float32, n)
	for i := range src {
		src[i] = float32(i%1000) * 1e-3
	}
	halves := make([]byte, 2*n)
	putHalves(halves, src)
	loops := []struct {
		name string
		run  func()
	}{
		{"add-float32", func() { combine(dst, leBytes32(src), 4, true) }},
		{"put-halves", func() { putHalves(halves, src) }},
		{"add-halves", func() { combine(dst, halves, 2, true) }},
		{"round-to-halves", func() { roundToHalves(dst) }},
	}
	for _, l := range loops {
		for _, simd := range []bool{true, false} {
			name := l.name + "/portable"
			if simd {
				name = l.name + "/simd"
			}
			b.Run(name, func(b *testing.B) {
				if simd && !useSIMD {
					b.Skip("no AVX and F16C here")
				}
				saved := useSIMD
				useSIMD = simd
				defer func() { useSIMD = saved }()
				b.SetBytes(4 * n)
				for b.Loop() {
					l.run()
				}
			})
		}
	}
}
