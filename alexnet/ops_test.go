package alexnet

import (
	"math"
	"math/rand/v2"
	"testing"

	"gorgonia.org/tensor"
)

func dense(shape tensor.Shape, v []float32) *tensor.Dense {
	return tensor.New(tensor.WithShape(shape...), tensor.WithBacking(v))
}

// ReLU and its gradient as PyTorch has them: zero gradient at 0, NaN (of
// either sign bit) through, infinities kept or zeroed by their sign.
func TestReLUEdges(t *testing.T) {
	negNaN := math.Float32frombits(0xffc00000) // x86's default NaN has the sign bit set
	inf := float32(math.Inf(1))
	x := []float32{-1, 0, 2, float32(math.NaN()), -0.5, float32(math.Copysign(0, -1)), inf, -inf, negNaN, 1e-45}
	shape := tensor.Shape{1, len(x)}
	fwd := reluOp{shape: shape, scratch: &opScratch{}}
	y, err := fwd.Do(dense(shape, x))
	if err != nil {
		t.Fatal(err)
	}
	got := y.Data().([]float32)
	want := []float32{0, 0, 2, 0, 0, 0, inf, 0, 0, 1e-45}
	for i := range x {
		isNaN := x[i] != x[i]
		if isNaN != (got[i] != got[i]) || (!isNaN && (got[i] != want[i] || math.Signbit(float64(got[i])))) {
			t.Errorf("relu(%v) = %v", x[i], got[i])
		}
	}
	back := reluOp{shape: shape, grad: true, scratch: &opScratch{}}
	ones := make([]float32, len(x))
	for i := range ones {
		ones[i] = 1
	}
	dx, err := back.Do(y, dense(shape, ones))
	if err != nil {
		t.Fatal(err)
	}
	wantGrad := []float32{0, 0, 1, 1, 0, 0, 1, 0, 1, 1}
	for i, g := range dx.Data().([]float32) {
		if g != wantGrad[i] {
			t.Errorf("relu gradient at x = %v: %v, want %v", x[i], g, wantGrad[i])
		}
	}
}

// Max pooling 3/2 on a 5x5 plane with ties and overlapping windows: the
// first maximum wins, and the gradient adds up where windows share it.
func TestMaxPoolTiesAndOverlap(t *testing.T) {
	x := []float32{
		1, 1, 1, 0, 0,
		1, 1, 1, 0, 0,
		1, 1, 9, 0, 0, // the centre is in all four windows
		0, 0, 0, 0, 0,
		0, 0, 0, 0, 7,
	}
	fwd := poolOp{batch: 1, channels: 1, side: 5, outSide: 2, kernel: 3, stride: 2, scratch: &opScratch{}, argmax: new([]int32)}
	y, err := fwd.Do(dense(tensor.Shape{1, 1, 5, 5}, x))
	if err != nil {
		t.Fatal(err)
	}
	if got := y.Data().([]float32); got[0] != 9 || got[1] != 9 || got[2] != 9 || got[3] != 9 {
		t.Errorf("pooled %v", got)
	}
	back := fwd
	back.grad, back.scratch = true, &opScratch{}
	dx, err := back.Do(dense(tensor.Shape{1, 1, 2, 2}, []float32{1, 2, 3, 4}))
	if err != nil {
		t.Fatal(err)
	}
	if d := dx.Data().([]float32); d[12] != 10 || d[24] != 0 {
		t.Errorf("gradient %v: want 10 at the centre", d)
	}
	// Ties: all ones in the window; the first (top-left) takes the gradient.
	tie := make([]float32, 25)
	for i := range tie {
		tie[i] = 1
	}
	fwd.Do(dense(tensor.Shape{1, 1, 5, 5}, tie))
	dx, _ = back.Do(dense(tensor.Shape{1, 1, 2, 2}, []float32{1, 1, 1, 1}))
	if d := dx.Data().([]float32); d[0] != 1 || d[2] != 1 || d[10] != 1 || d[12] != 1 || d[1] != 0 {
		t.Errorf("ties: gradient %v, want it on each window's first element", d)
	}
	// NaN wins over any number, and the pooled value is NaN.
	withNaN := make([]float32, 25)
	withNaN[6], withNaN[0] = float32(math.NaN()), 100
	y, _ = fwd.Do(dense(tensor.Shape{1, 1, 5, 5}, withNaN))
	if got := y.Data().([]float32); got[0] == got[0] || (*fwd.argmax)[0] != 6 {
		t.Errorf("a NaN in the window: pooled %v at %d", got[0], (*fwd.argmax)[0])
	}
}

// The gradient through the dropout masks (and everything else) against
// central differences of the loss, with the masks held fixed by reseeding.
func TestGradientWithDropoutMatchesFiniteDifferences(t *testing.T) {
	p := tinyParams(t, 3)
	const batch = 4
	net, err := NewNet(p, NetOptions{Batch: batch, Train: true, Dropout: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	defer net.Close()
	in := rand.New(rand.NewPCG(1, 1))
	x := make([]float32, batch*3*p.Spec.Input*p.Spec.Input)
	for i := range x {
		x[i] = float32(in.NormFloat64())
	}
	labels := []int{0, 1, 2, 3}
	loss := func(grad []float32) float64 {
		l, err := net.Gradient(x, labels, batch, rand.New(rand.NewPCG(9, 9)), grad)
		if err != nil {
			t.Fatal(err)
		}
		return float64(l)
	}
	grad := make([]float32, len(p.Flat))
	loss(grad)
	// Along the gradient of a whole tensor, the loss changes by eps times the
	// gradient's norm: large enough to stand out of float32 rounding.
	scratch := make([]float32, len(p.Flat))
	for _, name := range []string{"features.0.weight", "features.10.weight", "classifier.1.weight", "classifier.4.weight"} {
		w, _ := p.View(name)
		off := -1
		for _, tn := range p.Layout {
			if tn.Name == name {
				off = tn.Offset
			}
		}
		g := grad[off : off+len(w)]
		norm := 0.0
		for _, v := range g {
			norm += float64(v) * float64(v)
		}
		norm = math.Sqrt(norm)
		old := append([]float32(nil), w...)
		move := func(eps float64) float64 {
			for i := range w {
				w[i] = old[i] + float32(eps*float64(g[i])/norm)
			}
			return loss(scratch)
		}
		const eps = 0.002
		want := (move(eps) - move(-eps)) / (2 * eps)
		copy(w, old)
		if math.Abs(norm-want) > 0.03*norm {
			t.Errorf("%s: gradient norm %.6g, but the loss changes at %.6g along it", name, norm, want)
		}
	}
}

// A net bound to the flat gradient writes it in place, with the same bits as
// one that copies it out.
func TestBindGradGivesTheSameGradient(t *testing.T) {
	p := tinyParams(t, 5)
	const batch = 3
	x := make([]float32, batch*3*p.Spec.Input*p.Spec.Input)
	for i := range x {
		x[i] = float32(i%17) * 0.1
	}
	labels := []int{4, 0, 2}
	grads := [2][]float32{}
	for k, bind := range []bool{false, true} {
		net, err := NewNet(p, NetOptions{Batch: batch, Train: true})
		if err != nil {
			t.Fatal(err)
		}
		defer net.Close()
		grads[k] = make([]float32, len(p.Flat))
		if bind && !net.BindGrad(grads[k]) {
			t.Fatal("BindGrad could not bind every gradient op")
		}
		for range 2 { // the second run writes over the first
			if _, err := net.Gradient(x, labels, batch, nil, grads[k]); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range grads[0] {
		if grads[0][i] != grads[1][i] {
			t.Fatalf("gradient %d: %v bound, %v copied", i, grads[1][i], grads[0][i])
		}
	}
}

// im2col and col2im against the definition, over geometries where the kernel
// overhangs the image on either side, strides skip columns, and the padding
// exceeds the kernel: y = W·im2col(x) is the direct convolution, and col2im is
// its transpose (<col2im(c), x> = <c, im2col(x)> for any c and x).
func TestIm2colIsTheConvolution(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, g := range []convGeom{
		{in: 3, kernel: 11, stride: 4, pad: 2, side: 31},
		{in: 2, kernel: 5, stride: 1, pad: 2, side: 9},
		{in: 2, kernel: 3, stride: 1, pad: 1, side: 5},
		{in: 1, kernel: 3, stride: 2, pad: 4, side: 4},
		{in: 1, kernel: 1, stride: 3, pad: 0, side: 7},
		{in: 2, kernel: 4, stride: 3, pad: 3, side: 6},
		{in: 1, kernel: 5, stride: 1, pad: 0, side: 5},
		{in: 1, kernel: 8, stride: 5, pad: 3, side: 2}, // the last offsets lie past the image
	} {
		g.outSide = (g.side+2*g.pad-g.kernel)/g.stride + 1
		x := make([]float32, g.in*g.side*g.side)
		for i := range x {
			x[i] = float32(rng.IntN(9) - 4)
		}
		col := make([]float32, g.colRows()*g.hw())
		for i := range col {
			col[i] = float32(rng.IntN(9) - 4) // must all be overwritten
		}
		g.im2col(x, col)
		for c := 0; c < g.in; c++ {
			for ky := 0; ky < g.kernel; ky++ {
				for kx := 0; kx < g.kernel; kx++ {
					for oy := 0; oy < g.outSide; oy++ {
						for ox := 0; ox < g.outSide; ox++ {
							iy, ix := oy*g.stride-g.pad+ky, ox*g.stride-g.pad+kx
							var want float32
							if iy >= 0 && iy < g.side && ix >= 0 && ix < g.side {
								want = x[(c*g.side+iy)*g.side+ix]
							}
							if got := col[((c*g.kernel+ky)*g.kernel+kx)*g.hw()+oy*g.outSide+ox]; got != want {
								t.Fatalf("%+v: patch (c %d, ky %d, kx %d) at (%d, %d) = %v, want %v", g, c, ky, kx, oy, ox, got, want)
							}
						}
					}
				}
			}
		}
		// The adjoint: integers, so the sums are exact.
		c := make([]float32, len(col))
		for i := range c {
			c[i] = float32(rng.IntN(9) - 4)
		}
		back := make([]float32, len(x))
		g.col2im(c, back)
		var lhs, rhs float32
		for i := range x {
			lhs += back[i] * x[i]
		}
		for i := range c {
			rhs += c[i] * col[i]
		}
		if lhs != rhs {
			t.Errorf("%+v: <col2im(c), x> = %v, <c, im2col(x)> = %v", g, lhs, rhs)
		}
	}
}

// Nothing needs the gradient of the images, so the first convolution has no
// input-gradient op; every later one does.
func TestNoGradientForTheImages(t *testing.T) {
	p := tinyParams(t, 5)
	net, err := NewNet(p, NetOptions{Batch: 2, Train: true})
	if err != nil {
		t.Fatal(err)
	}
	defer net.Close()
	inputGrads := map[int]bool{}
	for _, n := range net.g.AllNodes() {
		if op, ok := n.Op().(convOp); ok && op.kind == convGradInput {
			inputGrads[op.g.in] = true
		}
	}
	convs := p.Spec.Convs()
	if inputGrads[convs[0].In] {
		t.Error("the first convolution computes a gradient for the images")
	}
	for _, c := range convs[1:] {
		if !inputGrads[c.In] {
			t.Errorf("no input gradient for the convolution of %s", c.WeightName)
		}
	}
}

// The classifier's gradients are final, in the bound vector, before the
// convolutions' backward starts, and the hook says so once per Gradient.
func TestClassifierGradientIsReadyFirst(t *testing.T) {
	p := tinyParams(t, 5)
	const batch = 2
	net, err := NewNet(p, NetOptions{Batch: batch, Train: true})
	if err != nil {
		t.Fatal(err)
	}
	defer net.Close()
	grad := make([]float32, len(p.Flat))
	if _, err := net.OnClassifierGradient(func() {}); err == nil {
		t.Error("OnClassifierGradient accepted a net without a bound gradient")
	}
	if !net.BindGrad(grad) {
		t.Fatal("BindGrad failed")
	}
	var calls int
	var early []float32
	var headUntouched bool
	var from int
	from, err = net.OnClassifierGradient(func() {
		calls++
		early = append(early[:0], grad[from:]...)
		headUntouched = true
		for _, g := range grad[:from] {
			if !math.IsNaN(float64(g)) {
				headUntouched = false
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := p.View(p.Spec.Linears()[0].WeightName)
	if from <= 0 || &p.Flat[from] != &first[0] {
		t.Fatalf("classifier starts at %d, not at %s", from, p.Spec.Linears()[0].WeightName)
	}
	x := make([]float32, batch*3*p.Spec.Input*p.Spec.Input)
	for i := range x {
		x[i] = float32(i%13) * 0.1
	}
	for step := 1; step <= 2; step++ {
		for i := range grad {
			grad[i] = float32(math.NaN())
		}
		if _, err := net.Gradient(x, []int{1, 3}, batch, nil, grad); err != nil {
			t.Fatal(err)
		}
		if calls != step {
			t.Fatalf("after %d Gradient calls the hook ran %d times", step, calls)
		}
		if !headUntouched {
			t.Error("the convolutions' gradients were written before the hook ran")
		}
		for i, g := range grad[from:] {
			if math.IsNaN(float64(g)) || math.Float32bits(g) != math.Float32bits(early[i]) {
				t.Fatalf("classifier gradient %d: %v when the hook ran, %v at the end", i, early[i], g)
			}
		}
	}
	if _, err := net.Gradient(x, []int{1, 3}, batch, nil, make([]float32, len(p.Flat))); err == nil {
		t.Error("Gradient into another vector than the bound one was accepted with the hook set")
	}
	if _, err := net.OnClassifierGradient(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Gradient(x, []int{1, 3}, batch, nil, grad); err != nil || calls != 2 {
		t.Errorf("after removing the hook: %v, %d calls", err, calls)
	}
}

// The pool against PyTorch's CPU rule, written plainly, on values full of
// ties, signed zeros, infinities and NaNs: the same maximum, bit for bit, at
// the same offset.
func TestMaxPoolIsPyTorchsRule(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	inf := float32(math.Inf(1))
	values := []float32{-inf, -3, -1, float32(math.Copysign(0, -1)), 0, 1, 1, 2, inf}
	const side, k, st, planes = 11, 3, 2, 40
	o := (side-k)/st + 1
	x := make([]float32, planes*side*side)
	for i := range x {
		x[i] = values[rng.IntN(len(values))]
		if rng.IntN(60) == 0 {
			x[i] = float32(math.NaN())
		}
	}
	op := poolOp{batch: planes, channels: 1, side: side, outSide: o, kernel: k, stride: st, scratch: &opScratch{}, argmax: new([]int32)}
	y, err := op.Do(dense(tensor.Shape{planes, 1, side, side}, x))
	if err != nil {
		t.Fatal(err)
	}
	got := y.Data().([]float32)
	for q := range planes {
		plane := x[q*side*side : (q+1)*side*side]
		for oy := range o {
			for ox := range o {
				// aten/src/ATen/native/cpu/MaxPoolKernel.cpp
				at, top := oy*st*side+ox*st, float32(math.Inf(-1))
				for ky := range k {
					for kx := range k {
						i := (oy*st+ky)*side + ox*st + kx
						if v := plane[i]; v > top || v != v {
							at, top = i, v
						}
					}
				}
				i := q*o*o + oy*o + ox
				if math.Float32bits(got[i]) != math.Float32bits(top) || (*op.argmax)[i] != int32(at) {
					t.Fatalf("plane %d window (%d, %d): pooled %v at %d, PyTorch's rule gives %v at %d", q, oy, ox, got[i], (*op.argmax)[i], top, at)
				}
			}
		}
	}
}
