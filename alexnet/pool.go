package alexnet

import (
	"fmt"
	"hash"
	"math"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// poolOp is PyTorch's MaxPool2d (no padding, floor mode) as a gorgonia op
// that remembers where each maximum was, and the gradient op that sends dy
// back there. Ties go to the first maximum in the window and a NaN wins (the
// last NaN, when there are several), as in PyTorch's CPU kernel. Planes
// (sample, channel) are independent, so the work splits over them.
type poolOp struct {
	batch, channels, side, outSide, kernel, stride int
	grad                                           bool // dy -> dx; otherwise x -> y
	scratch                                        *opScratch
	argmax                                         *[]int32 // shared by the pair: the input offset of each output's maximum
}

func maxPool(x *G.Node, batch, channels, side, kernel, stride int) (*G.Node, error) {
	op := poolOp{batch: batch, channels: channels, side: side, outSide: (side-kernel)/stride + 1, kernel: kernel, stride: stride,
		scratch: &opScratch{}, argmax: new([]int32)}
	return G.ApplyOp(op, x)
}

func (op poolOp) Arity() int { return 1 }

func (op poolOp) Type() hm.Type {
	t := G.TensorType{Dims: 4, Of: hm.TypeVariable('a')}
	return hm.NewFnType(t, t)
}

func (op poolOp) shape() tensor.Shape {
	if op.grad {
		return tensor.Shape{op.batch, op.channels, op.side, op.side}
	}
	return tensor.Shape{op.batch, op.channels, op.outSide, op.outSide}
}

func (op poolOp) InferShape(...G.DimSizer) (tensor.Shape, error) { return op.shape(), nil }
func (op poolOp) ReturnsPtr() bool                               { return false }
func (op poolOp) CallsExtern() bool                              { return false }
func (op poolOp) OverwritesInput() int                           { return -1 }
func (op poolOp) WriteHash(h hash.Hash)                          { fmt.Fprint(h, op.String()) }
func (op poolOp) Hashcode() uint32                               { return hashOf(op) }
func (op poolOp) String() string {
	name := "MaxPool"
	if op.grad {
		name = "MaxPoolGrad"
	}
	return fmt.Sprintf("%s{%dx%dx%d k%d s%d b%d}", name, op.channels, op.side, op.side, op.kernel, op.stride, op.batch)
}

func (op poolOp) DiffWRT(int) []bool { return []bool{!op.grad} }

func (op poolOp) SymDiff(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error) {
	if op.grad {
		return nil, fmt.Errorf("alexnet: %v has no gradient", op)
	}
	back := op
	back.grad, back.scratch = true, &opScratch{}
	dx, err := G.ApplyOp(back, grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx}, nil
}

func (op poolOp) Do(in ...G.Value) (G.Value, error) {
	return op.UsePreallocDo(op.scratch.output(op.shape()), in...)
}

func (op poolOp) UsePreallocDo(prealloc G.Value, in ...G.Value) (G.Value, error) {
	out, dst, args, err := operands(op, op.shape(), prealloc, in)
	if err != nil {
		return nil, err
	}
	planes, s, o := op.batch*op.channels, op.side, op.outSide
	if op.grad {
		argmax := *op.argmax
		if len(argmax) != planes*o*o {
			return nil, fmt.Errorf("alexnet: %v ran before its max pool", op)
		}
		dy := args[0]
		parallel(parts, func(p int) {
			lo, hi := span(planes, parts, p)
			clear(dst[lo*s*s : hi*s*s])
			for q := lo; q < hi; q++ {
				plane := dst[q*s*s : (q+1)*s*s]
				for i, at := range argmax[q*o*o : (q+1)*o*o] {
					plane[at] += dy[q*o*o+i]
				}
			}
		})
		return out, nil
	}
	x := args[0]
	argmax := grow(op.argmax, planes*o*o)
	k, st := op.kernel, op.stride
	parallel(parts, func(p int) {
		lo, hi := span(planes, parts, p)
		for q := lo; q < hi; q++ {
			plane := x[q*s*s : (q+1)*s*s]
			for oy := 0; oy < o; oy++ {
				for ox := 0; ox < o; ox++ {
					// Compared as integers that order as the floats do, and
					// selected with masks: no branch for the data to mispredict
					// (the op took a quarter less time). A NaN takes PyTorch's
					// rule, in lastNaN.
					first := oy*st*s + ox*st
					best, top, numbers := first, orderKey(plane[first]), uint32(1)
					for ky := 0; ky < k; ky++ {
						row := (oy*st+ky)*s + ox*st
						for kx, v := range plane[row : row+k] {
							key := orderKey(v)
							greater := (int64(top) - int64(key)) >> 63 // all ones when key > top
							top ^= (top ^ key) & int32(greater)
							best ^= (best ^ (row + kx)) & int(greater)
							numbers &= notNaN(v)
						}
					}
					if numbers == 0 {
						best = op.lastNaN(plane, first)
					}
					i := q*o*o + oy*o + ox
					dst[i], argmax[i] = plane[best], int32(best)
				}
			}
		}
	})
	return out, nil
}

// orderKey maps a float to an int32 that orders as the float does, with -0
// equal to +0 (so that the first of the two stays the maximum, as PyTorch's
// comparison keeps it). NaNs map beyond the infinities: see lastNaN.
func orderKey(v float32) int32 {
	b := math.Float32bits(v)
	neg := int32(b) >> 31 // all ones for a negative number
	return (int32(b&0x7fffffff) ^ neg) - neg
}

// notNaN is 1 for a number and 0 for a NaN, without a branch.
func notNaN(v float32) uint32 {
	return (math.Float32bits(v)&0x7fffffff - 0x7f800001) >> 31
}

// lastNaN is the offset of the window's last NaN: where PyTorch's maximum
// (val > max || isnan(val)) ends up when the window holds one.
func (op poolOp) lastNaN(plane []float32, first int) int {
	at := -1
	for ky := 0; ky < op.kernel; ky++ {
		row := first + ky*op.side
		for kx, v := range plane[row : row+op.kernel] {
			if v != v {
				at = row + kx
			}
		}
	}
	return at
}
