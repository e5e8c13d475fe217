//go:build cgo && !purego

package kernels

// Each kernel's host build against a Go reference written from the CPU
// model's semantics (package alexnet): bit for bit wherever doc.go says the
// CPU's arithmetic and order are followed.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/alexring/alexring/alexnet"
)

// mem pins the Go slices a test hands to the C kernels, so that their
// addresses stay valid while C writes through them.
type mem struct{ runtime.Pinner }

func (m *mem) f32(s []float32) uint64 {
	if len(s) == 0 {
		return 0
	}
	m.Pin(&s[0])
	return uint64(uintptr(unsafe.Pointer(&s[0])))
}

func (m *mem) i32(s []int32) uint64 {
	if len(s) == 0 {
		return 0
	}
	m.Pin(&s[0])
	return uint64(uintptr(unsafe.Pointer(&s[0])))
}

// words packs a test's arguments as a device launch does: addresses (uint64)
// as they are, ints as int64, float64s as their bits.
func words(args ...any) []uint64 {
	w := make([]uint64, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case uint64:
			w[i] = v
		case int:
			w[i] = uint64(int64(v))
		case float64:
			w[i] = math.Float64bits(v)
		default:
			panic(fmt.Sprintf("words: argument %d is %T", i, a))
		}
	}
	return w
}

func run(t *testing.T, name string, n int, args ...any) {
	t.Helper()
	if err := Launch(name, int64(n), words(args...)); err != nil {
		t.Fatal(err)
	}
}

// sameBits reports the first values of got whose bits differ from want's.
func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	compare(t, what, got, want, false)
}

// sameNumbers is sameBits with any NaN equal to any NaN: the payload of a NaN
// that arithmetic makes is no part of the contract (with two NaN operands
// the CPU returns one or the other; a GPU returns its canonical NaN).
func sameNumbers(t *testing.T, what string, got, want []float32) {
	t.Helper()
	compare(t, what, got, want, true)
}

func compare(t *testing.T, what string, got, want []float32, anyNaN bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	bad := 0
	for i := range got {
		if anyNaN && got[i] != got[i] && want[i] != want[i] {
			continue
		}
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			if bad < 5 {
				t.Errorf("%s[%d] = %g (%#08x), want %g (%#08x)", what, i, got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d values differ", what, bad, len(got))
	}
}

func bits(b uint32) float32 { return math.Float32frombits(b) }

var (
	nanPos  = bits(0x7fc00000)
	nanNeg  = bits(0xffc00000) // a NaN with the sign bit set
	nanLow  = bits(0x7fc00123) // a quiet NaN with a payload
	negZero = float32(math.Copysign(0, -1))
	inf     = float32(math.Inf(1))
)

// specials are the values whose bits the element-wise rules must get right.
var specials = []float32{
	0, negZero, 1, -1, 0.5, -2.5, inf, -inf, nanPos, nanNeg, nanLow,
	bits(1), bits(0x80000001), // the smallest subnormals
	math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32 * 3,
}

// randoms is n values: the specials, then normal numbers of all magnitudes.
func randoms(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		if i < len(specials) {
			v[i] = specials[i]
			continue
		}
		v[i] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(13)-6)))
	}
	r.Shuffle(n, func(i, j int) { v[i], v[j] = v[j], v[i] })
	return v
}

// sizes not multiples of the block, and the edges.
var sizes = []int{1, 2, Block - 1, Block, Block + 1, 3*Block + 17}

// The CPU's ReLU rules, alexnet's reluBits and nonZero.
func reluBits(b uint32) uint32 {
	negative := uint32(int32(b) >> 31)
	nan := uint32(int32(0x7f800000-(b&0x7fffffff)) >> 31)
	return b &^ (negative &^ nan)
}

func nonZero(b uint32) uint32 { return uint32(-int32((b | -b) >> 31)) }

func TestBiasActReLU(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, n := range sizes {
		var m mem
		y := randoms(r, n)
		// bias -0 adds nothing (x + -0 is x, -0 included): ReLU sees the specials as they are.
		bias := []float32{negZero}
		want := make([]float32, n)
		for i, v := range y {
			want[i] = bits(reluBits(math.Float32bits(v + bias[0])))
		}
		run(t, "bias_act", n, m.f32(y), m.f32(bias), 1, 1, 1)
		sameBits(t, fmt.Sprintf("relu n=%d", n), y, want)
		m.Unpin()
	}
	// The rule on its own: -0 and negatives to +0, a NaN of either sign kept.
	for _, c := range []struct{ in, out float32 }{{negZero, 0}, {-1, 0}, {nanNeg, nanNeg}, {nanPos, nanPos}, {-inf, 0}, {inf, inf}, {bits(1), bits(1)}} {
		var m mem
		y, bias := []float32{c.in}, []float32{negZero}
		run(t, "bias_act", 1, m.f32(y), m.f32(bias), 1, 1, 1)
		sameBits(t, fmt.Sprintf("relu(%#08x)", math.Float32bits(c.in)), y, []float32{c.out})
		m.Unpin()
	}
}

// TestBiasActLayouts: a convolution's bias over CNHW (inner = batch*H*W,
// channels = C) and a linear layer's over [batch][out] (inner 1), with and
// without ReLU.
func TestBiasActLayouts(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct{ inner, channels, outer int }{{2 * 13 * 13, 5, 1}, {1, 10, 7}, {3, 4, 2}} {
		for _, relu := range []int{0, 1} {
			var m mem
			n := c.inner * c.channels * c.outer
			y, bias := randoms(r, n), randoms(r, c.channels)
			want := make([]float32, n)
			for i, v := range y {
				s := v + bias[(i/c.inner)%c.channels]
				if relu != 0 {
					s = bits(reluBits(math.Float32bits(s)))
				}
				want[i] = s
			}
			run(t, "bias_act", n, m.f32(y), m.f32(bias), c.inner, c.channels, relu)
			sameNumbers(t, fmt.Sprintf("bias_act %+v relu %d", c, relu), y, want)
			m.Unpin()
		}
	}
}

func TestReLUBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 3))
	for _, n := range sizes {
		var m mem
		y, dy := randoms(r, n), randoms(r, n)
		for i := range y { // a ReLU's outputs: mostly +0 and positives, and the specials
			if i%3 == 0 {
				y[i] = 0
			}
		}
		want := make([]float32, n)
		for i := range y {
			want[i] = bits(math.Float32bits(dy[i]) & nonZero(math.Float32bits(y[i])))
		}
		dx := make([]float32, n)
		run(t, "relu_backward", n, m.f32(y), m.f32(dy), m.f32(dx))
		sameBits(t, fmt.Sprintf("relu_backward n=%d", n), dx, want)
		// In place, dx = dy, as the model runs it.
		run(t, "relu_backward", n, m.f32(y), m.f32(dy), m.f32(dy))
		sameBits(t, fmt.Sprintf("relu_backward in place n=%d", n), dy, want)
		m.Unpin()
	}
	// The gradient at 0 is 0 (+0); a NaN output passes dy.
	var m mem
	defer m.Unpin()
	y, dy, dx := []float32{0, nanNeg, 1e-45}, []float32{-3, -5, 7}, make([]float32, 3)
	run(t, "relu_backward", 3, m.f32(y), m.f32(dy), m.f32(dx))
	sameBits(t, "relu_backward at 0, NaN, subnormal", dx, []float32{0, -5, 7})
}

// poolRef is PyTorch's max_pool2d CPU kernel: from -inf, a value replaces
// the maximum when greater or NaN; the index starts at the window's first.
func poolRef(x []float32, planes, side, o, k, st int) ([]float32, []int32) {
	y, arg := make([]float32, planes*o*o), make([]int32, planes*o*o)
	for q := range planes {
		plane := x[q*side*side : (q+1)*side*side]
		for oy := range o {
			for ox := range o {
				best, top := oy*st*side+ox*st, float32(math.Inf(-1))
				for ky := range k {
					for kx := range k {
						at := (oy*st+ky)*side + ox*st + kx
						if v := plane[at]; v > top || v != v {
							best, top = at, v
						}
					}
				}
				y[q*o*o+oy*o+ox], arg[q*o*o+oy*o+ox] = plane[best], int32(best)
			}
		}
	}
	return y, arg
}

func pool(t *testing.T, x []float32, planes, side, o, k, st int) ([]float32, []int32) {
	t.Helper()
	var m mem
	defer m.Unpin()
	y, arg := make([]float32, planes*o*o), make([]int32, planes*o*o)
	run(t, "maxpool_forward", len(y), m.f32(x), m.f32(y), m.i32(arg), side, o, k, st)
	return y, arg
}

func sameArgmax(t *testing.T, what string, got, want []int32) {
	t.Helper()
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("%s: argmax[%d] = %d, want %d", what, i, got[i], want[i])
			return
		}
	}
}

// TestMaxPoolWindows: one 3x3 window each, the rules of doc.go.
func TestMaxPoolWindows(t *testing.T) {
	for _, c := range []struct {
		what   string
		window [9]float32
		at     int32
	}{
		{"tie: the first maximum", [9]float32{1, 2, 0, 2, 1, 2, 0, 0, 0}, 1},
		{"-0 before +0", [9]float32{-1, negZero, 0, -1, -1, -1, -1, -1, -1}, 1},
		{"+0 before -0", [9]float32{-1, 0, negZero, -1, -1, -1, -1, -1, -1}, 1},
		{"one NaN", [9]float32{1, 2, 3, 4, nanPos, 5, 6, 7, inf}, 4},
		{"two NaNs: the last", [9]float32{1, nanNeg, 3, 4, 5, 6, 7, nanLow, 9}, 7},
		{"a NaN first", [9]float32{nanPos, 2, 3, 4, 5, 6, 7, 8, 9}, 0},
		{"all equal", [9]float32{5, 5, 5, 5, 5, 5, 5, 5, 5}, 0},
		{"all -inf", [9]float32{-inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf}, 0},
		{"+inf last", [9]float32{1, 2, 3, 4, 5, 6, 7, 8, inf}, 8},
	} {
		y, arg := pool(t, c.window[:], 1, 3, 1, 3, 2)
		if arg[0] != c.at || math.Float32bits(y[0]) != math.Float32bits(c.window[c.at]) {
			t.Errorf("%s: y %g at %d, want %g at %d", c.what, y[0], arg[0], c.window[c.at], c.at)
		}
		wy, warg := poolRef(c.window[:], 1, 3, 1, 3, 2)
		sameBits(t, c.what+" (reference)", y, wy)
		sameArgmax(t, c.what+" (reference)", arg, warg)
	}
}

// tieHeavy draws from a few values, -0 and +0 among them, and a NaN now and
// then: windows with ties, signed zeros and NaNs.
func tieHeavy(r *rand.Rand, n int, nans bool) []float32 {
	set := []float32{-1, negZero, 0, 1, 2, 2}
	x := make([]float32, n)
	for i := range x {
		x[i] = set[r.IntN(len(set))]
		if nans && r.IntN(40) == 0 {
			x[i] = []float32{nanPos, nanNeg}[r.IntN(2)]
		}
	}
	return x
}

// poolShapes: AlexNet's 3/2 pools on odd sides (55, 27, 13; tiny's 15, 7,
// 3), a side whose last row no window covers (8), and other kernels.
var poolShapes = []struct{ planes, side, k, st int }{
	{2, 55, 3, 2}, {3, 27, 3, 2}, {4, 13, 3, 2}, {5, 15, 3, 2}, {6, 7, 3, 2}, {7, 3, 3, 2},
	{3, 8, 3, 2}, {2, 9, 2, 2}, {2, 6, 3, 1}, {1, 11, 5, 3},
}

func TestMaxPoolForward(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 4))
	for _, s := range poolShapes {
		o := (s.side-s.k)/s.st + 1
		for _, x := range [][]float32{tieHeavy(r, s.planes*s.side*s.side, false), tieHeavy(r, s.planes*s.side*s.side, true), randoms(r, s.planes*s.side*s.side)} {
			y, arg := pool(t, x, s.planes, s.side, o, s.k, s.st)
			wy, warg := poolRef(x, s.planes, s.side, o, s.k, s.st)
			what := fmt.Sprintf("maxpool %+v", s)
			sameBits(t, what, y, wy)
			sameArgmax(t, what, arg, warg)
		}
	}
}

// poolBackRef is the CPU's scatter: dx from 0, dy added at each output's
// argmax in increasing output index (or decreasing, to show that the data
// tells the two orders apart).
func poolBackRef(dy []float32, arg []int32, planes, side, o int, reverse bool) []float32 {
	dx := make([]float32, planes*side*side)
	for q := range planes {
		for j := range o * o {
			if reverse {
				j = o*o - 1 - j
			}
			dx[q*side*side+int(arg[q*o*o+j])] += dy[q*o*o+j]
		}
	}
	return dx
}

// wide is n values of magnitudes from 1e-4 to 1e4, whose sums depend on the
// order of the additions.
func wide(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * math.Pow(10, 8*r.Float64()-4))
	}
	return v
}

func TestMaxPoolBackward(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 5))
	orderMatters := false
	for _, s := range poolShapes {
		o := (s.side-s.k)/s.st + 1
		// The argmax of a tie-heavy forward pass (maxima shared by
		// neighbouring windows), and any position of each window (more
		// collisions still).
		_, fromForward := pool(t, tieHeavy(r, s.planes*s.side*s.side, true), s.planes, s.side, o, s.k, s.st)
		anywhere := make([]int32, len(fromForward))
		for i := range anywhere {
			oy, ox := (i/o)%o, i%o
			anywhere[i] = int32((oy*s.st+r.IntN(s.k))*s.side + ox*s.st + r.IntN(s.k))
		}
		for _, arg := range [][]int32{fromForward, anywhere} {
			var m mem
			dy := wide(r, len(arg))
			dx := make([]float32, s.planes*s.side*s.side)
			for i := range dx {
				dx[i] = nanPos // overwritten
			}
			run(t, "maxpool_backward", len(dx), m.f32(dy), m.i32(arg), m.f32(dx), s.side, o, s.k, s.st)
			want := poolBackRef(dy, arg, s.planes, s.side, o, false)
			sameBits(t, fmt.Sprintf("maxpool_backward %+v", s), dx, want)
			rev := poolBackRef(dy, arg, s.planes, s.side, o, true)
			for i := range want {
				orderMatters = orderMatters || math.Float32bits(rev[i]) != math.Float32bits(want[i])
			}
			m.Unpin()
		}
	}
	if !orderMatters {
		t.Error("the data does not tell the CPU's order of additions from its reverse")
	}
}

// convShape is one im2col/col2im geometry.
type convShape struct{ batch, channels, side, k, st, pad int }

func (s convShape) out() int { return (s.side+2*s.pad-s.k)/s.st + 1 }

// convShapes: conv1 (11/4/2) on 224 and on tiny's 67, AlexNet's 5/1/2 and
// 3/1/1 on odd sides, no padding with uncovered pixels, stride > kernel.
var convShapes = []convShape{
	{1, 3, 224, 11, 4, 2}, {2, 3, 67, 11, 4, 2}, {3, 2, 13, 5, 1, 2}, {2, 3, 7, 3, 1, 1},
	{1, 1, 5, 3, 2, 0}, {2, 2, 6, 2, 3, 1}, {1, 2, 1, 3, 1, 1},
}

// im2colRef is doc.go's definition, in direct loops over CNHW x.
func im2colRef(s convShape, x []float32) []float32 {
	o := s.out()
	cols := s.batch * o * o
	col := make([]float32, s.channels*s.k*s.k*cols)
	for c := range s.channels {
		for ky := range s.k {
			for kx := range s.k {
				row := (c*s.k+ky)*s.k + kx
				for b := range s.batch {
					for oy := range o {
						for ox := range o {
							iy, ix := oy*s.st-s.pad+ky, ox*s.st-s.pad+kx
							if iy >= 0 && iy < s.side && ix >= 0 && ix < s.side {
								col[row*cols+b*o*o+oy*o+ox] = x[((c*s.batch+b)*s.side+iy)*s.side+ix]
							}
						}
					}
				}
			}
		}
	}
	return col
}

// col2imRef is the CPU's col2im: x from 0, each patch entry added to its
// pixel in (c, ky, kx, then position) order, so that every pixel's sum runs
// in (ky, kx) order; reverse runs it backwards.
func col2imRef(s convShape, col []float32, reverse bool) []float32 {
	o := s.out()
	cols := s.batch * o * o
	x := make([]float32, s.channels*s.batch*s.side*s.side)
	for c := range s.channels {
		for kk := range s.k * s.k {
			if reverse {
				kk = s.k*s.k - 1 - kk
			}
			ky, kx := kk/s.k, kk%s.k
			row := (c*s.k+ky)*s.k + kx
			for b := range s.batch {
				for oy := range o {
					for ox := range o {
						iy, ix := oy*s.st-s.pad+ky, ox*s.st-s.pad+kx
						if iy >= 0 && iy < s.side && ix >= 0 && ix < s.side {
							x[((c*s.batch+b)*s.side+iy)*s.side+ix] += col[row*cols+b*o*o+oy*o+ox]
						}
					}
				}
			}
		}
	}
	return x
}

func convArgs(s convShape) []any {
	return []any{s.batch, s.channels, s.side, s.k, s.st, s.pad, s.out()}
}

func TestIm2col(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 6))
	for _, s := range convShapes {
		var m mem
		x := randoms(r, s.channels*s.batch*s.side*s.side)
		want := im2colRef(s, x)
		col := make([]float32, len(want))
		for i := range col {
			col[i] = nanPos // every entry is written, the padding's with +0
		}
		run(t, "im2col", len(col), append([]any{m.f32(x), m.f32(col)}, convArgs(s)...)...)
		sameBits(t, fmt.Sprintf("im2col %+v", s), col, want)
		m.Unpin()
	}
}

func TestCol2im(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 7))
	orderMatters := false
	for _, s := range convShapes {
		var m mem
		o := s.out()
		col := wide(r, s.channels*s.k*s.k*s.batch*o*o)
		x := make([]float32, s.channels*s.batch*s.side*s.side)
		for i := range x {
			x[i] = nanPos // overwritten, not added to
		}
		run(t, "col2im", len(x), append([]any{m.f32(col), m.f32(x)}, convArgs(s)...)...)
		want := col2imRef(s, col, false)
		sameBits(t, fmt.Sprintf("col2im %+v", s), x, want)
		rev := col2imRef(s, col, true)
		for i := range want {
			orderMatters = orderMatters || math.Float32bits(rev[i]) != math.Float32bits(want[i])
		}
		m.Unpin()
	}
	if !orderMatters {
		t.Error("the data does not tell the CPU's order of additions from its reverse")
	}
}

// TestIm2colCol2imAdjoint: col2im is im2col's transpose, <im2col(x), c> =
// <x, col2im(c)>, on small integers (exact sums), a check of the index maps
// independent of the references.
func TestIm2colCol2imAdjoint(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 8))
	for _, s := range convShapes[1:] {
		var m mem
		o := s.out()
		x, c := make([]float32, s.channels*s.batch*s.side*s.side), make([]float32, s.channels*s.k*s.k*s.batch*o*o)
		for i := range x {
			x[i] = float32(r.IntN(7) - 3)
		}
		for i := range c {
			c[i] = float32(r.IntN(7) - 3)
		}
		col, back := make([]float32, len(c)), make([]float32, len(x))
		run(t, "im2col", len(col), append([]any{m.f32(x), m.f32(col)}, convArgs(s)...)...)
		run(t, "col2im", len(back), append([]any{m.f32(c), m.f32(back)}, convArgs(s)...)...)
		var lhs, rhs float64
		for i := range c {
			lhs += float64(col[i]) * float64(c[i])
		}
		for i := range x {
			rhs += float64(x[i]) * float64(back[i])
		}
		if lhs != rhs {
			t.Errorf("%+v: <im2col(x), c> = %g, <x, col2im(c)> = %g", s, lhs, rhs)
		}
		m.Unpin()
	}
}

func TestMaskMultiply(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 9))
	for _, n := range sizes {
		var m mem
		x := randoms(r, n)
		mask := make([]float32, n)
		alexnet.DrawMasks(rand.New(rand.NewPCG(2, uint64(n))), 0.5, [][]float32{mask})
		want := make([]float32, n)
		for i := range x {
			want[i] = x[i] * mask[i]
		}
		y := make([]float32, n)
		run(t, "mask_multiply", n, m.f32(x), m.f32(mask), m.f32(y))
		sameNumbers(t, fmt.Sprintf("mask_multiply n=%d", n), y, want)
		m.Unpin()
	}
}

// softmaxRef is alexnet's logSoftmaxRow and softmaxCEGrad (with the loss
// gradient 1) over rows of k.
func softmaxRef(z, targets []float32, k int) (logp, dz []float32) {
	logp, dz = make([]float32, len(z)), make([]float32, len(z))
	for i := 0; i < len(z)/k; i++ {
		row, out, t := z[i*k:(i+1)*k], logp[i*k:(i+1)*k], targets[i*k:(i+1)*k]
		m := row[0]
		for _, v := range row[1:] {
			if v > m {
				m = v
			}
		}
		var sum float64
		for _, v := range row {
			sum += math.Exp(float64(v - m))
		}
		lse := float32(math.Log(sum))
		for j, v := range row {
			out[j] = v - m - lse
		}
		var w float32
		for _, x := range t {
			w += x
		}
		if w == 0 {
			continue
		}
		for j := range out {
			dz[i*k+j] = float32(math.Exp(float64(out[j])))*w - t[j]
		}
	}
	return logp, dz
}

// TestSoftmaxXent is bit for bit against the CPU's formula: both take exp and
// log in double precision and round the results to float32, so the C
// library's and Go's functions (each within an ulp of double) agree after the
// rounding.
func TestSoftmaxXent(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 10))
	for _, k := range []int{1, 2, 5, 10, 1000} {
		rows := 37
		z, targets := make([]float32, rows*k), make([]float32, rows*k)
		for i := range rows {
			row := z[i*k : (i+1)*k]
			for j := range row {
				switch i % 4 {
				case 0: // ordinary logits
					row[j] = float32(r.NormFloat64() * 3)
				case 1: // large logits, 1e30: exp of the shifted values only
					row[j] = float32(r.NormFloat64() * 1e30)
				case 2: // all equal
					row[j] = 7
				case 3: // one far ahead
					row[j] = float32(r.NormFloat64())
					if j == i%k {
						row[j] = 80
					}
				}
			}
			switch {
			case i == rows-1 || i%9 == 5: // padding rows: no targets
			case i%5 == 2: // soft targets
				for j := range k {
					targets[i*k+j] = 1 / float32(k) / float32(rows)
				}
			default: // one-hot, scaled by 1/batch as the loss's mean
				targets[i*k+r.IntN(k)] = 1 / float32(rows)
			}
		}
		var m mem
		logp, dz := make([]float32, len(z)), make([]float32, len(z))
		for i := range dz {
			dz[i] = nanPos // every row is written, a padding row's with +0
		}
		run(t, "softmax_xent", rows, m.f32(z), m.f32(targets), m.f32(dz), m.f32(logp), k)
		wantLogp, wantDz := softmaxRef(z, targets, k)
		sameBits(t, fmt.Sprintf("logp k=%d", k), logp, wantLogp)
		sameBits(t, fmt.Sprintf("dlogits k=%d", k), dz, wantDz)
		for i, v := range logp {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 1) {
				t.Fatalf("k=%d: logp[%d] = %g", k, i, v)
			}
		}
		m.Unpin()
	}
}

// adamGradients are gradients of every magnitude: zeros, subnormals, tiny,
// ordinary, huge (g*g overflows to +inf).
func adamGradients(r *rand.Rand, n int) []float32 {
	g := make([]float32, n)
	for i := range g {
		switch i % 8 {
		case 0:
			g[i] = 0
		case 1:
			g[i] = bits(uint32(r.IntN(1 << 23))) // subnormal or 0
		case 2:
			g[i] = float32(r.NormFloat64() * 1e-30)
		case 3:
			g[i] = float32(r.NormFloat64() * 1e20)
		default:
			g[i] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(13)-9)))
		}
		if r.IntN(2) == 0 {
			g[i] = -g[i]
		}
	}
	return g
}

// TestAdam: the kernel is alexnet.AdamElement bit for bit, over 20 steps of
// three configurations, on p, m and v.
func TestAdam(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 11))
	n := 10*Block + 3
	for _, cfg := range []alexnet.AdamConfig{alexnet.DefaultAdam(), {LR: 1, Beta1: 0.5, Beta2: 0.9, Eps: 1e-3}, {LR: 1e-5, Beta1: 0, Beta2: 0.99999, Eps: 1e-12}} {
		opt, err := alexnet.NewAdam(cfg, n)
		if err != nil {
			t.Fatal(err)
		}
		p := make([]float32, n)
		for i := range p {
			p[i] = float32(r.NormFloat64() * 0.1)
		}
		wantP, wantM, wantV := append([]float32(nil), p...), make([]float32, n), make([]float32, n)
		var m mem
		for step := range 20 {
			g := adamGradients(r, n)
			s := opt.Advance()
			for i := range wantP {
				wantP[i], wantM[i], wantV[i] = alexnet.AdamElement(s, wantP[i], g[i], wantM[i], wantV[i])
			}
			run(t, "adam", n, m.f32(p), m.f32(g), m.f32(opt.M), m.f32(opt.V),
				float64(s.Beta1), float64(s.Beta2), float64(s.OneMinusBeta1), float64(s.OneMinusBeta2),
				float64(s.StepSize), float64(s.BiasCorrection2Sqrt), float64(s.Eps))
			what := fmt.Sprintf("adam %+v step %d", cfg, step+1)
			sameBits(t, what+" p", p, wantP)
			sameBits(t, what+" m", opt.M, wantM)
			sameBits(t, what+" v", opt.V, wantV)
			if t.Failed() {
				break
			}
		}
		m.Unpin()
	}
}

func TestNonfinite(t *testing.T) {
	finite := []float32{0, negZero, 1, -1, math.MaxFloat32, -math.MaxFloat32, bits(1), bits(0x807fffff), 1e-38}
	for _, n := range sizes {
		for _, bad := range []float32{inf, -inf, nanPos, nanNeg, 0} {
			for _, at := range []int{0, n - 1} {
				var m mem
				x := make([]float32, n)
				for i := range x {
					x[i] = finite[i%len(finite)]
				}
				x[at] = bad
				flag := []int32{7} // untouched when everything is finite
				run(t, "nonfinite", n, m.f32(x), m.i32(flag))
				want := int32(7)
				if bad != bad || math.IsInf(float64(bad), 0) {
					want = 1
				}
				if flag[0] != want {
					t.Errorf("nonfinite n=%d with %g at %d: flag %d, want %d", n, bad, at, flag[0], want)
				}
				m.Unpin()
			}
		}
	}
}

func TestLayoutTransposes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 12))
	for _, s := range []struct{ batch, channels, hw int }{{1, 1, 1}, {3, 5, 7}, {2, 3, 224 * 224}, {4, 16, 1}, {1, 9, 36}} {
		var m mem
		n := s.batch * s.channels * s.hw
		src := randoms(r, n)
		want := make([]float32, n)
		for b := range s.batch {
			for c := range s.channels {
				for p := range s.hw {
					want[(c*s.batch+b)*s.hw+p] = src[(b*s.channels+c)*s.hw+p]
				}
			}
		}
		cnhw, back := make([]float32, n), make([]float32, n)
		run(t, "nchw_to_cnhw", n, m.f32(src), m.f32(cnhw), s.batch, s.channels, s.hw)
		sameBits(t, fmt.Sprintf("nchw_to_cnhw %+v", s), cnhw, want)
		run(t, "cnhw_to_nchw", n, m.f32(cnhw), m.f32(back), s.batch, s.channels, s.hw)
		sameBits(t, fmt.Sprintf("round trip %+v", s), back, src)
		m.Unpin()
	}
}

// TestZeroItems: n = 0 launches nothing, so even null pointers are fine.
func TestZeroItems(t *testing.T) {
	for _, name := range Names() {
		if err := Launch(name, 0, make([]uint64, byName[name].nargs)); err != nil {
			t.Errorf("%s over 0 items: %v", name, err)
		}
	}
}

// TestStrideLoop: with grids far smaller than the items, each thread takes
// many, and the results are those of Geometry's launch.
func TestStrideLoop(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 13))
	s := convShape{2, 3, 13, 5, 1, 2}
	o := s.out()
	col := wide(r, s.channels*s.k*s.k*s.batch*o*o)
	x := randoms(r, 5000)
	mask := randoms(r, 5000)
	var m mem
	defer m.Unpin()
	want, wantX := make([]float32, len(x)), make([]float32, s.channels*s.batch*s.side*s.side)
	run(t, "mask_multiply", len(x), m.f32(x), m.f32(mask), m.f32(want))
	run(t, "col2im", len(wantX), append([]any{m.f32(col), m.f32(wantX)}, convArgs(s)...)...)
	for _, g := range []struct{ grid, block int }{{1, 1}, {1, 32}, {3, 5}, {7, 256}} {
		y, gotX := make([]float32, len(x)), make([]float32, len(wantX))
		if err := launch("mask_multiply", int64(len(x)), words(m.f32(x), m.f32(mask), m.f32(y)), g.grid, g.block); err != nil {
			t.Fatal(err)
		}
		if err := launch("col2im", int64(len(gotX)), words(append([]any{m.f32(col), m.f32(gotX)}, convArgs(s)...)...), g.grid, g.block); err != nil {
			t.Fatal(err)
		}
		sameBits(t, fmt.Sprintf("mask_multiply grid %d block %d", g.grid, g.block), y, want)
		sameBits(t, fmt.Sprintf("col2im grid %d block %d", g.grid, g.block), gotX, wantX)
	}
}

func TestLaunchErrors(t *testing.T) {
	for _, c := range []struct {
		name  string
		args  int
		wants []string
	}{
		{"relu_forward", 3, []string{`"relu_forward"`, "im2col"}},
		{"adam", 10, []string{"adam", "11", "10"}},
		{"mask_multiply", 4, []string{"mask_multiply", "3", "4"}},
	} {
		err := Launch(c.name, 1, make([]uint64, c.args))
		if err == nil {
			t.Fatalf("Launch(%s, %d args) ran", c.name, c.args)
		}
		for _, w := range c.wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Launch(%s, %d args): %v; want it to name %s", c.name, c.args, err, w)
			}
		}
	}
}
