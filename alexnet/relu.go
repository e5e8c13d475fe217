package alexnet

import (
	"fmt"
	"hash"
	"math"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// reluOp is ReLU as one gorgonia op, and its gradient as another. gorgonia's
// Rectify differentiates through a comparison tensor and a multiplication,
// cloning the activations twice per layer and step; this writes each result
// once into reused memory. The gradient follows PyTorch's threshold_backward
// on the output: dy where y > 0, else 0 (zero at x = 0; NaN passes through).
type reluOp struct {
	shape   tensor.Shape
	grad    bool // (y, dy) -> dx; otherwise x -> y
	scratch *opScratch
}

func relu(x *G.Node) (*G.Node, error) {
	return G.ApplyOp(reluOp{shape: x.Shape().Clone(), scratch: &opScratch{}}, x)
}

func (op reluOp) Arity() int {
	if op.grad {
		return 2
	}
	return 1
}

func (op reluOp) Type() hm.Type {
	t := G.TensorType{Dims: len(op.shape), Of: hm.TypeVariable('a')}
	if op.grad {
		return hm.NewFnType(t, t, t)
	}
	return hm.NewFnType(t, t)
}

func (op reluOp) InferShape(...G.DimSizer) (tensor.Shape, error) { return op.shape, nil }
func (op reluOp) ReturnsPtr() bool                               { return false }
func (op reluOp) CallsExtern() bool                              { return false }
func (op reluOp) OverwritesInput() int                           { return -1 }
func (op reluOp) WriteHash(h hash.Hash)                          { fmt.Fprint(h, op.String()) }
func (op reluOp) Hashcode() uint32                               { return hashOf(op) }
func (op reluOp) String() string {
	if op.grad {
		return fmt.Sprintf("ReLUGrad%v", op.shape)
	}
	return fmt.Sprintf("ReLU%v", op.shape)
}

func (op reluOp) DiffWRT(int) []bool { return []bool{!op.grad} }

func (op reluOp) SymDiff(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error) {
	if op.grad {
		return nil, fmt.Errorf("alexnet: %v has no gradient", op)
	}
	dx, err := G.ApplyOp(reluOp{shape: op.shape, grad: true, scratch: &opScratch{}}, output, grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx}, nil
}

func (op reluOp) Do(in ...G.Value) (G.Value, error) {
	return op.UsePreallocDo(op.scratch.output(op.shape), in...)
}

// reluBits is max(x, 0) on a float32's bits: negatives (and -0) become +0;
// NaNs, whatever their sign bit, stay NaN as in PyTorch.
func reluBits(b uint32) uint32 {
	negative := uint32(int32(b) >> 31)                    // all ones if the sign bit is set
	nan := uint32(int32(0x7f800000-(b&0x7fffffff)) >> 31) // all ones if NaN
	return b &^ (negative &^ nan)
}

// nonZero is all ones unless b is +0: ReLU's output is +0 exactly where its
// gradient is 0 (PyTorch: y <= 0), and positive or NaN elsewhere.
func nonZero(b uint32) uint32 { return uint32(-int32((b | -b) >> 31)) }

func (op reluOp) UsePreallocDo(prealloc G.Value, in ...G.Value) (G.Value, error) {
	out, dst, args, err := operands(op, op.shape, prealloc, in)
	if err != nil {
		return nil, err
	}
	n := len(dst)
	parallel(parts, func(p int) {
		lo, hi := span(n, parts, p)
		// Branch-free on the bits: the signs are a coin toss, and the
		// mispredicted branches made ReLU cost several times its memory
		// traffic.
		if op.grad {
			y, dy, dx := args[0][lo:hi], args[1][lo:hi], dst[lo:hi]
			for i, v := range y {
				dx[i] = math.Float32frombits(math.Float32bits(dy[i]) & nonZero(math.Float32bits(v)))
			}
			return
		}
		x, y := args[0][lo:hi], dst[lo:hi]
		for i, v := range x {
			y[i] = math.Float32frombits(reluBits(math.Float32bits(v)))
		}
	})
	return out, nil
}

// maskOp multiplies by a fixed mask (dropout's, scaled by 1/(1-p)): forward
// (x, mask) -> x*mask, and its gradient is the same op on (dy, mask).
// gorgonia's HadamardProd cloned the activations on every step.
type maskOp struct {
	shape   tensor.Shape
	scratch *opScratch
}

func applyMask(x, mask *G.Node) (*G.Node, error) {
	return G.ApplyOp(maskOp{shape: x.Shape().Clone(), scratch: &opScratch{}}, x, mask)
}

func (op maskOp) Arity() int { return 2 }
func (op maskOp) Type() hm.Type {
	t := G.TensorType{Dims: len(op.shape), Of: hm.TypeVariable('a')}
	return hm.NewFnType(t, t, t)
}
func (op maskOp) InferShape(...G.DimSizer) (tensor.Shape, error) { return op.shape, nil }
func (op maskOp) ReturnsPtr() bool                               { return false }
func (op maskOp) CallsExtern() bool                              { return false }
func (op maskOp) OverwritesInput() int                           { return -1 }
func (op maskOp) WriteHash(h hash.Hash)                          { fmt.Fprint(h, op.String()) }
func (op maskOp) Hashcode() uint32                               { return hashOf(op) }
func (op maskOp) String() string                                 { return fmt.Sprintf("Mask%v", op.shape) }
func (op maskOp) DiffWRT(int) []bool                             { return []bool{true, false} }

func (op maskOp) SymDiff(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error) {
	dx, err := G.ApplyOp(maskOp{shape: op.shape, scratch: &opScratch{}}, grad, inputs[1])
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, nil}, nil
}

func (op maskOp) Do(in ...G.Value) (G.Value, error) {
	return op.UsePreallocDo(op.scratch.output(op.shape), in...)
}

func (op maskOp) UsePreallocDo(prealloc G.Value, in ...G.Value) (G.Value, error) {
	out, dst, args, err := operands(op, op.shape, prealloc, in)
	if err != nil {
		return nil, err
	}
	x, mask := args[0], args[1]
	for i := range dst {
		dst[i] = x[i] * mask[i]
	}
	return out, nil
}
