package alexnet

import (
	"fmt"
	"hash"
	"sync"

	"github.com/chewxy/hm"
	"gonum.org/v1/gonum/blas"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/alexring/alexring/alexnet/onednn"
)

// Convolution as custom gorgonia ops. gorgonia's Conv2d lays the patches out
// batch-major ([B*Ho*Wo, Cin*K*K]), multiplies, then transposes the result back
// to NCHW and its gradient likewise: two transposes and a 4-D copy per layer and
// step, and a separate broadcast copy for the bias. Per image, W [Cout, Cin*K*K]
// times the image's patches [Cin*K*K, Ho*Wo] is already NCHW, so these ops do
// one im2col into a reused buffer and one sgemm, with the bias added in place.
//
// With the oneDNN kernels (kernels.go) the same four ops call a layer's
// oneDNN primitives instead (dnnLayer): forward with the bias, backward data,
// and backward weights, which computes the bias gradient too; the bias op
// then only hands on what backward weights wrote into its output, and takes
// the weight gradient as its input so that it runs after it.

// convGeom is one convolution's shapes.
type convGeom struct {
	batch, in, out, kernel, stride, pad int
	side, outSide                       int
}

func (g convGeom) colRows() int { return g.in * g.kernel * g.kernel }
func (g convGeom) hw() int      { return g.outSide * g.outSide }

// valid is the range [lo, hi) of output positions whose input position
// o*stride - pad + k, for kernel offset k, falls inside the image.
func (g convGeom) valid(k int) (lo, hi int) {
	if k < g.pad {
		lo = min(g.outSide, (g.pad-k+g.stride-1)/g.stride)
	}
	last := g.side - 1 + g.pad - k // o*stride may reach this; negative: none does
	if last < 0 {
		return lo, lo
	}
	return lo, max(lo, min(g.outSide, last/g.stride+1))
}

// im2col writes image x [in, side, side] as patches [in*K*K, outSide*outSide].
func (g convGeom) im2col(x, col []float32) {
	hw := g.hw()
	for c := 0; c < g.in; c++ {
		plane := x[c*g.side*g.side : (c+1)*g.side*g.side]
		for ky := 0; ky < g.kernel; ky++ {
			for kx := 0; kx < g.kernel; kx++ {
				row := col[((c*g.kernel+ky)*g.kernel+kx)*hw:][:hw]
				lo, hi := g.valid(kx) // the same columns are inside on every row
				for oy := 0; oy < g.outSide; oy++ {
					out := row[oy*g.outSide : (oy+1)*g.outSide]
					iy := oy*g.stride - g.pad + ky
					if iy < 0 || iy >= g.side {
						clear(out)
						continue
					}
					clear(out[:lo])
					clear(out[hi:])
					if lo == hi {
						continue
					}
					src := plane[iy*g.side+lo*g.stride-g.pad+kx:]
					if g.stride == 1 {
						copy(out[lo:hi], src)
						continue
					}
					for j, ox := 0, lo; ox < hi; j, ox = j+g.stride, ox+1 {
						out[ox] = src[j]
					}
				}
			}
		}
	}
}

// col2im adds patches [in*K*K, outSide*outSide] back into image dx.
func (g convGeom) col2im(col, dx []float32) {
	hw := g.hw()
	for c := 0; c < g.in; c++ {
		plane := dx[c*g.side*g.side : (c+1)*g.side*g.side]
		for ky := 0; ky < g.kernel; ky++ {
			for kx := 0; kx < g.kernel; kx++ {
				row := col[((c*g.kernel+ky)*g.kernel+kx)*hw:][:hw]
				lo, hi := g.valid(kx)
				if lo == hi {
					continue
				}
				for oy := 0; oy < g.outSide; oy++ {
					iy := oy*g.stride - g.pad + ky
					if iy < 0 || iy >= g.side {
						continue
					}
					in := row[oy*g.outSide+lo : oy*g.outSide+hi]
					dst := plane[iy*g.side+lo*g.stride-g.pad+kx:]
					if g.stride == 1 {
						dst = dst[:len(in)]
						for j, v := range in {
							dst[j] += v
						}
						continue
					}
					for j, k := 0, 0; j < len(in); j, k = j+1, k+g.stride {
						dst[k] += in[j]
					}
				}
			}
		}
	}
}

// operands checks that prealloc can take an op's output of the given shape and
// returns its data with the inputs' data, all float32.
func operands(op G.Op, shape tensor.Shape, prealloc G.Value, in []G.Value) (*tensor.Dense, []float32, [][]float32, error) {
	out, ok := prealloc.(*tensor.Dense)
	if !ok || !out.Shape().Eq(shape) || out.Dtype() != tensor.Float32 {
		return nil, nil, nil, fmt.Errorf("alexnet: %v cannot write into %T", op, prealloc)
	}
	args := make([][]float32, len(in))
	for i, v := range in {
		_, f, err := denseF32(v, fmt.Sprintf("%v input %d", op, i))
		if err != nil {
			return nil, nil, nil, err
		}
		args[i] = f
	}
	return out, out.Data().([]float32), args, nil
}

// convKind says which of the four computations an op is.
type convKind int

const (
	convForward     convKind = iota // (x, w, b) -> y
	convGradInput                   // (w, dy) -> dx
	convGradWeights                 // (x, dy) -> dw
	convGradBias                    // (dy) -> db
)

var convKindNames = [...]string{"Conv", "ConvGradInput", "ConvGradWeights", "ConvGradBias"}

type convOp struct {
	g    convGeom
	kind convKind
	// dataInput marks a convolution of the images themselves: nothing needs
	// the gradient of its input, so none is computed (for the first layer that
	// was an sgemm and col2im as large as its forward pass, 8% of a step).
	dataInput bool
	scratch   *opScratch
	// dnn, when set, is the layer's oneDNN primitives, shared by its ops.
	dnn *dnnLayer
}

// dnnLayer is one convolution layer in oneDNN: its primitives, created on
// the first forward call (a training graph's backward ops exist by then:
// SymDiff marks the layer), and the bias gradient op's output, which
// backward weights fills.
type dnnLayer struct {
	train bool
	conv  *onednn.Conv
	bias  *opScratch
}

func (l *dnnLayer) primitives(g convGeom, dataInput bool) (*onednn.Conv, error) {
	if l.conv != nil {
		return l.conv, nil
	}
	c, err := onednn.NewConv(onednn.Shape{
		Batch: g.batch, In: g.in, Out: g.out, Side: g.side, OutSide: g.outSide, Kernel: g.kernel, Stride: g.stride, Pad: g.pad,
		Train: l.train, DiffSrc: !dataInput,
	})
	if err != nil {
		return nil, err
	}
	noteConvImpl(c)
	l.conv = c
	return c, nil
}

// opScratch is an op's reused memory: its output (rewritten every step; the
// values of one step are dead by the next).
type opScratch struct {
	out *tensor.Dense
	// computed, when set, runs each time the op has written its output (the
	// Net's OnClassifierGradient hook).
	computed func()
}

// patches is the im2col path's scratch, shared by the convolution ops of
// every graph: the patches and the weight-gradient sums, one buffer per
// piece of the batch, as large as the largest op's. A graph's machine runs
// its ops one at a time and a worker one graph at a time, so one set takes
// the place of one per op (the seed model's training graph: 124 MiB of them,
// 18 MiB shared); graphs run side by side (tests) take turns.
var patches struct {
	sync.Mutex
	cols    [parts][]float32
	partial [parts][]float32
}

func (s *opScratch) output(shape tensor.Shape) *tensor.Dense {
	if s.out == nil {
		s.out = tensor.New(tensor.WithShape(shape...), tensor.Of(tensor.Float32))
	}
	return s.out
}

// grow returns *buf cut to n, reallocated when too short.
func grow[T any](buf *[]T, n int) []T {
	if cap(*buf) < n {
		*buf = make([]T, n)
	}
	*buf = (*buf)[:n]
	return *buf
}

// conv2d applies the fused convolution and bias. An x without an op is the
// graph's input: the images, which need no gradient.
// The kernels are the network's (CPUKernelsFor, when the graph is built).
func conv2d(x, w, b *G.Node, c Conv, batch int, kernels CPUKernels) (*G.Node, error) {
	g := convGeom{batch: batch, in: c.In, out: c.Out, kernel: c.Kernel, stride: c.Stride, pad: c.Pad, side: c.InSide, outSide: c.OutSide}
	op := convOp{g: g, kind: convForward, dataInput: x.Op() == nil, scratch: &opScratch{}}
	if kernels == KernelsOneDNN {
		op.dnn = &dnnLayer{}
	}
	return G.ApplyOp(op, x, w, b)
}

func (op convOp) Arity() int {
	switch op.kind {
	case convGradBias:
		return 1
	case convForward:
		return 3
	}
	return 2
}

func (op convOp) Type() hm.Type {
	a := hm.TypeVariable('a')
	t4 := G.TensorType{Dims: 4, Of: a}
	t1 := G.TensorType{Dims: 1, Of: a}
	switch op.kind {
	case convForward:
		return hm.NewFnType(t4, t4, t1, t4)
	case convGradBias:
		return hm.NewFnType(t4, t1)
	}
	return hm.NewFnType(t4, t4, t4)
}

func (op convOp) shape() tensor.Shape {
	g := op.g
	switch op.kind {
	case convForward:
		return tensor.Shape{g.batch, g.out, g.outSide, g.outSide}
	case convGradInput:
		return tensor.Shape{g.batch, g.in, g.side, g.side}
	case convGradWeights:
		return tensor.Shape{g.out, g.in, g.kernel, g.kernel}
	}
	return tensor.Shape{g.out}
}

func (op convOp) InferShape(...G.DimSizer) (tensor.Shape, error) { return op.shape(), nil }
func (op convOp) ReturnsPtr() bool                               { return false }
func (op convOp) CallsExtern() bool                              { return true }
func (op convOp) OverwritesInput() int                           { return -1 }
func (op convOp) WriteHash(h hash.Hash)                          { fmt.Fprint(h, op.String()) }
func (op convOp) Hashcode() uint32                               { return hashOf(op) }
func (op convOp) String() string {
	g := op.g
	kernels := ""
	if op.dnn != nil {
		kernels = " onednn"
	}
	return fmt.Sprintf("%s{%dx%d->%d k%d s%d p%d b%d%s}", convKindNames[op.kind], g.in, g.side, g.out, g.kernel, g.stride, g.pad, g.batch, kernels)
}

func (op convOp) DiffWRT(int) []bool {
	if op.kind == convForward {
		return []bool{!op.dataInput, true, true}
	}
	return nil
}

func (op convOp) SymDiff(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error) {
	if op.kind != convForward {
		return nil, fmt.Errorf("alexnet: %v has no gradient", op)
	}
	x, w := inputs[0], inputs[1]
	if op.dnn != nil {
		op.dnn.train = true
		op.dnn.bias = &opScratch{}
	}
	var dx *G.Node
	if !op.dataInput {
		var err error
		if dx, err = G.ApplyOp(convOp{g: op.g, kind: convGradInput, scratch: &opScratch{}, dnn: op.dnn}, w, grad); err != nil {
			return nil, err
		}
	}
	dw, err := G.ApplyOp(convOp{g: op.g, kind: convGradWeights, scratch: &opScratch{}, dnn: op.dnn}, x, grad)
	if err != nil {
		return nil, err
	}
	var db *G.Node
	if op.dnn != nil {
		// Backward weights computes the bias gradient into this op's output.
		db, err = G.ApplyOp(convOp{g: op.g, kind: convGradBias, scratch: op.dnn.bias, dnn: op.dnn}, dw)
	} else {
		db, err = G.ApplyOp(convOp{g: op.g, kind: convGradBias, scratch: &opScratch{}}, grad)
	}
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, dw, db}, nil
}

func (op convOp) Do(in ...G.Value) (G.Value, error) {
	return op.UsePreallocDo(op.scratch.output(op.shape()), in...)
}

// UsePreallocDo computes into prealloc when it has the output's shape (the
// machine hands back last step's buffer), overwriting all of it.
func (op convOp) UsePreallocDo(prealloc G.Value, in ...G.Value) (G.Value, error) {
	out, dst, args, err := operands(op, op.shape(), prealloc, in)
	if err != nil {
		return nil, err
	}
	if op.dnn != nil {
		if err := op.doDNN(dst, args); err != nil {
			return nil, err
		}
		return out, nil
	}
	patches.Lock()
	defer patches.Unlock()
	g := op.g
	hw, rows := g.hw(), g.colRows()
	inSize, outSize := g.in*g.side*g.side, g.out*hw
	// The images of the batch are independent: cut the batch into pieces, one
	// goroutine and patch buffer each.
	pieces := min(parts, g.batch)
	switch op.kind {
	case convForward:
		x, w, b := args[0], args[1], args[2]
		parallel(pieces, func(k int) {
			col := grow(&patches.cols[k], rows*hw)
			lo, hi := span(g.batch, pieces, k)
			for i := lo; i < hi; i++ {
				y := dst[i*outSize : (i+1)*outSize]
				g.im2col(x[i*inSize:(i+1)*inSize], col)
				for c := 0; c < g.out; c++ {
					row := y[c*hw : (c+1)*hw]
					for j := range row {
						row[j] = b[c]
					}
				}
				sgemm(blas.NoTrans, blas.NoTrans, g.out, hw, rows, 1, w, rows, col, hw, 1, y, hw)
			}
		})
	case convGradInput:
		w, dy := args[0], args[1]
		parallel(pieces, func(k int) {
			col := grow(&patches.cols[k], rows*hw)
			lo, hi := span(g.batch, pieces, k)
			for i := lo; i < hi; i++ {
				dx := dst[i*inSize : (i+1)*inSize]
				clear(dx)
				sgemm(blas.Trans, blas.NoTrans, rows, hw, g.out, 1, w, rows, dy[i*outSize:(i+1)*outSize], hw, 0, col, hw)
				g.col2im(col, dx)
			}
		})
	case convGradWeights:
		// Each piece sums its images' gradients; the pieces are then added in
		// order, so the result does not depend on the number of cores.
		x, dy := args[0], args[1]
		parallel(pieces, func(k int) {
			col := grow(&patches.cols[k], rows*hw)
			dw := grow(&patches.partial[k], len(dst))
			clear(dw)
			lo, hi := span(g.batch, pieces, k)
			for i := lo; i < hi; i++ {
				g.im2col(x[i*inSize:(i+1)*inSize], col)
				sgemm(blas.NoTrans, blas.Trans, g.out, rows, hw, 1, dy[i*outSize:(i+1)*outSize], hw, col, hw, 1, dw, rows)
			}
		})
		copy(dst, patches.partial[0][:len(dst)])
		for k := 1; k < pieces; k++ {
			for j, v := range patches.partial[k][:len(dst)] {
				dst[j] += v
			}
		}
	case convGradBias:
		dy := args[0]
		clear(dst)
		for i := 0; i < g.batch; i++ {
			for c := 0; c < g.out; c++ {
				var s float32
				for _, v := range dy[i*outSize+c*hw : i*outSize+(c+1)*hw] {
					s += v
				}
				dst[c] += s
			}
		}
	}
	return out, nil
}

// doDNN is UsePreallocDo in oneDNN.
func (op convOp) doDNN(dst []float32, args [][]float32) error {
	c, err := op.dnn.primitives(op.g, op.dataInput)
	if err != nil {
		return err
	}
	switch op.kind {
	case convForward:
		return c.Forward(args[0], args[1], args[2], dst)
	case convGradInput:
		return c.BackwardData(args[0], args[1], dst)
	case convGradWeights:
		db := op.dnn.bias.output(tensor.Shape{op.g.out}).Data().([]float32)
		return c.BackwardWeights(args[0], args[1], dst, db)
	}
	// The bias gradient is in the bias op's output already (args[0] is the
	// weight gradient, the input that orders this op after backward weights);
	// into another buffer it is copied.
	if db := op.dnn.bias.output(tensor.Shape{op.g.out}).Data().([]float32); &db[0] != &dst[0] {
		copy(dst, db)
	}
	return nil
}
