//go:build gpu

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/alexnet/gpu"
	"github.com/alexring/alexring/alexnet/gpu/hostdev"
	"github.com/alexring/alexring/alexnet/gpu/kernels"
)

// kernelCase is one launch: its buffers' initial contents (int32 data as
// float32 bits) and its arguments after n, given the buffers' addresses.
type kernelCase struct {
	name, kernel string
	n            int64
	bufs         [][]float32
	args         func(p []gpu.Ptr) []any
	ulps         uint32 // the float32 ulps allowed; 0: bit for bit
}

// TestKernels runs every kernel on the GPU and on the host device (package
// hostdev: the kernels' host build, which package kernels tests against the
// CPU backend) with the same inputs, edge cases included, and compares every
// buffer afterwards, inputs too. The PTX is compiled without fused
// multiply-adds and the host build without contraction, so the results must
// be the same bits, except where the device's double exp and log may differ
// from the C library's in the last bit (softmax_xent: 1 float ulp).
func TestKernels(t *testing.T) {
	d := openDevice(t)
	h, err := hostdev.New()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	covered := map[string]bool{}
	for _, c := range kernelCases() {
		covered[c.kernel] = true
		t.Run(c.name, func(t *testing.T) {
			got := runKernel(t, d, c)
			want := runKernel(t, h, c)
			for i := range want {
				worst, at := uint32(0), -1
				for j := range want[i] {
					if u := ulps(got[i][j], want[i][j]); u > worst {
						worst, at = u, j
					}
				}
				if worst > c.ulps {
					t.Errorf("buffer %d[%d]: GPU %v (%#x), host %v (%#x): %d ulps, allowed %d",
						i, at, got[i][at], math.Float32bits(got[i][at]), want[i][at], math.Float32bits(want[i][at]), worst, c.ulps)
				}
			}
		})
	}
	for _, name := range kernels.Names() {
		if !covered[name] {
			t.Errorf("kernel %s has no case here", name)
		}
	}
}

// runKernel uploads c's buffers to dev, launches c and returns the buffers.
func runKernel(t *testing.T, dev gpu.Device, c kernelCase) [][]float32 {
	t.Helper()
	ptrs := make([]gpu.Ptr, len(c.bufs))
	for i, b := range c.bufs {
		p, err := dev.Alloc(len(b))
		if err != nil {
			t.Fatal(err)
		}
		dev.Upload(p, b)
		ptrs[i] = p
	}
	dev.Launch(c.kernel, c.n, c.args(ptrs)...)
	out := make([][]float32, len(c.bufs))
	for i, b := range c.bufs {
		out[i] = make([]float32, len(b))
		dev.Download(out[i], ptrs[i])
	}
	if err := dev.Sync(); err != nil {
		t.Fatalf("%s on %s: %v", c.kernel, dev.Describe(), err)
	}
	for _, p := range ptrs {
		dev.Free(p)
	}
	return out
}

// ulps is the distance of a and b in float32 steps; -0 and +0 differ. Two
// NaNs are equal whatever their bits: the GPU's arithmetic returns the
// canonical NaN where x86 passes an operand's payload on.
func ulps(a, b float32) uint32 {
	ab, bb := math.Float32bits(a), math.Float32bits(b)
	if ab == bb || (a != a && b != b) {
		return 0
	}
	if a != a || b != b || (ab>>31) != (bb>>31) {
		return math.MaxUint32
	}
	if ab > bb {
		return ab - bb
	}
	return bb - ab
}

// kernelCases covers each kernel of doc.go on sizes that are not multiples of
// the block, with zeros of both signs, ties, NaNs and infinities.
func kernelCases() []kernelCase {
	rng := rand.New(rand.NewPCG(7, 8))
	normal := func(n int) []float32 { return randVec(rng, n) }
	// edgy draws from a small set, so that max-pool windows tie, and mixes
	// in zeros, NaNs and infinities.
	edgy := func(n int) []float32 {
		set := []float32{0, float32(math.Copysign(0, -1)), 1, 1, -1, 2.5, -3, float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))}
		v := make([]float32, n)
		for i := range v {
			if rng.IntN(4) == 0 {
				v[i] = set[rng.IntN(len(set))]
			} else {
				v[i] = float32(rng.IntN(5)) - 2
			}
		}
		return v
	}
	zeros := func(n int) []float32 { return make([]float32, n) }
	ptr := func(p []gpu.Ptr, i int) any { return p[i] }
	i64 := func(v int) any { return int64(v) }

	var cases []kernelCase
	// im2col and col2im on two geometries: conv1 of the tiny model (11/4/2 on
	// 67) and a 3/2/1 one with an odd side.
	for _, g := range []struct{ batch, ch, side, k, stride, pad int }{{2, 3, 67, 11, 4, 2}, {3, 5, 13, 3, 2, 1}} {
		o := (g.side+2*g.pad-g.k)/g.stride + 1
		xn, coln := g.ch*g.batch*g.side*g.side, g.ch*g.k*g.k*g.batch*o*o
		geo := func(p []gpu.Ptr) []any {
			return []any{ptr(p, 0), ptr(p, 1), i64(g.batch), i64(g.ch), i64(g.side), i64(g.k), i64(g.stride), i64(g.pad), i64(o)}
		}
		tag := fmt.Sprintf("%d/%d/%d on %d", g.k, g.stride, g.pad, g.side)
		cases = append(cases,
			kernelCase{name: "im2col " + tag, kernel: "im2col", n: int64(coln), bufs: [][]float32{normal(xn), zeros(coln)}, args: geo},
			kernelCase{name: "col2im " + tag, kernel: "col2im", n: int64(xn), bufs: [][]float32{normal(coln), normal(xn)}, args: geo})
	}
	// bias_act: a conv's CNHW output (inner = batch*hw) and a linear's
	// [batch][out] (inner 1), with and without ReLU.
	for _, b := range []struct{ ch, inner, rows int }{{5, 3 * 49, 5}, {37, 1, 3 * 37}} {
		n := b.rows * b.inner
		if b.inner == 1 {
			n = b.rows
		}
		for _, relu := range []int{0, 1} {
			ch, inner := b.ch, b.inner
			cases = append(cases, kernelCase{name: fmt.Sprintf("bias_act %dx%d relu %d", ch, inner, relu), kernel: "bias_act", n: int64(n),
				bufs: [][]float32{edgy(n), normal(ch)},
				args: func(p []gpu.Ptr) []any { return []any{ptr(p, 0), ptr(p, 1), i64(inner), i64(ch), i64(relu)} }})
		}
	}
	const odd = 1000003 // a little over 3906 blocks of 256
	cases = append(cases,
		kernelCase{name: "relu_backward", kernel: "relu_backward", n: odd, bufs: [][]float32{edgy(odd), normal(odd), zeros(odd)},
			args: func(p []gpu.Ptr) []any { return []any{ptr(p, 0), ptr(p, 1), ptr(p, 2)} }},
		kernelCase{name: "relu_backward in place", kernel: "relu_backward", n: odd, bufs: [][]float32{edgy(odd), normal(odd)},
			args: func(p []gpu.Ptr) []any { return []any{ptr(p, 0), ptr(p, 1), ptr(p, 1)} }},
		kernelCase{name: "mask_multiply", kernel: "mask_multiply", n: odd, bufs: [][]float32{edgy(odd), edgy(odd), zeros(odd)},
			args: func(p []gpu.Ptr) []any { return []any{ptr(p, 0), ptr(p, 1), ptr(p, 2)} }})
	// More items than MaxGrid blocks of Block threads cover: the grid-stride
	// loop's second round.
	big := kernels.MaxGrid*kernels.Block + 12345
	cases = append(cases, kernelCase{name: "mask_multiply grid-stride", kernel: "mask_multiply", n: int64(big),
		bufs: [][]float32{normal(big), normal(big), zeros(big)},
		args: func(p []gpu.Ptr) []any { return []any{ptr(p, 0), ptr(p, 1), ptr(p, 2)} }})

	// Max pooling 3/2 on 13 -> 6 (the seed's last pool) and 27 -> 13, with
	// ties and NaNs; backward with the forward's argmax (from the host).
	for _, pg := range []struct{ planes, side int }{{7, 13}, {3, 27}} {
		o := (pg.side-3)/2 + 1
		in, out := pg.planes*pg.side*pg.side, pg.planes*o*o
		x := edgy(in)
		fwd := kernelCase{name: fmt.Sprintf("maxpool_forward %d", pg.side), kernel: "maxpool_forward", n: int64(out),
			bufs: [][]float32{x, zeros(out), zeros(out)},
			args: func(p []gpu.Ptr) []any {
				return []any{ptr(p, 0), ptr(p, 1), ptr(p, 2), i64(pg.side), i64(o), i64(3), i64(2)}
			}}
		argmax := hostArgmax(fwd)
		cases = append(cases, fwd, kernelCase{name: fmt.Sprintf("maxpool_backward %d", pg.side), kernel: "maxpool_backward", n: int64(in),
			bufs: [][]float32{normal(out), argmax, normal(in)},
			args: func(p []gpu.Ptr) []any {
				return []any{ptr(p, 0), ptr(p, 1), ptr(p, 2), i64(pg.side), i64(o), i64(3), i64(2)}
			}})
	}

	// softmax_xent: 5 rows of 11 classes, the last row without targets (the
	// padding of a short batch), one row with a large logit.
	const rows, classes = 5, 11
	logits, targets := normal(rows*classes), zeros(rows*classes)
	logits[2*classes+4] = 80
	for r := range rows - 1 {
		targets[r*classes+rng.IntN(classes)] = 1 / float32(rows-1)
	}
	cases = append(cases, kernelCase{name: "softmax_xent", kernel: "softmax_xent", n: rows, ulps: 1,
		bufs: [][]float32{logits, targets, zeros(rows * classes), zeros(rows * classes)},
		args: func(p []gpu.Ptr) []any { return []any{ptr(p, 0), ptr(p, 1), ptr(p, 2), ptr(p, 3), i64(classes)} }})

	// adam: step 3's coefficients, as the model passes them (float32 values
	// as doubles).
	a, _ := alexnet.NewAdam(alexnet.DefaultAdam(), 1)
	a.Advance()
	a.Advance()
	s := a.Advance()
	v := normal(odd)
	for i := range v {
		v[i] = v[i] * v[i]
	}
	cases = append(cases, kernelCase{name: "adam", kernel: "adam", n: odd,
		bufs: [][]float32{normal(odd), normal(odd), normal(odd), v},
		args: func(p []gpu.Ptr) []any {
			return []any{ptr(p, 0), ptr(p, 1), ptr(p, 2), ptr(p, 3), float64(s.Beta1), float64(s.Beta2), float64(s.OneMinusBeta1),
				float64(s.OneMinusBeta2), float64(s.StepSize), float64(s.BiasCorrection2Sqrt), float64(s.Eps)}
		}})

	// nonfinite: all finite (the flag stays 0), then an infinity at the end.
	finite, last := normal(odd), normal(odd)
	last[odd-1] = float32(math.Inf(-1))
	for _, c := range []struct {
		name string
		x    []float32
	}{{"nonfinite finite", finite}, {"nonfinite inf", last}} {
		cases = append(cases, kernelCase{name: c.name, kernel: "nonfinite", n: odd, bufs: [][]float32{c.x, zeros(1)},
			args: func(p []gpu.Ptr) []any { return []any{ptr(p, 0), ptr(p, 1)} }})
	}

	// The layout changes at the features' two ends.
	const batch, ch, hw = 3, 5, 6 * 6
	for _, k := range []string{"nchw_to_cnhw", "cnhw_to_nchw"} {
		cases = append(cases, kernelCase{name: k, kernel: k, n: batch * ch * hw, bufs: [][]float32{normal(batch * ch * hw), zeros(batch * ch * hw)},
			args: func(p []gpu.Ptr) []any { return []any{ptr(p, 0), ptr(p, 1), i64(batch), i64(ch), i64(hw)} }})
	}
	return cases
}

// hostArgmax runs a maxpool_forward case on the host and returns its argmax
// buffer, the input of the backward case.
func hostArgmax(c kernelCase) []float32 {
	h, err := hostdev.New()
	if err != nil {
		panic(err)
	}
	defer h.Close()
	ptrs := make([]gpu.Ptr, len(c.bufs))
	for i, b := range c.bufs {
		ptrs[i], _ = h.Alloc(len(b))
		h.Upload(ptrs[i], b)
	}
	h.Launch(c.kernel, c.n, c.args(ptrs)...)
	out := make([]float32, len(c.bufs[2]))
	h.Download(out, ptrs[2])
	if err := h.Sync(); err != nil {
		panic(err) // the host device checks the case itself: a bad case is a bug here
	}
	return out
}
