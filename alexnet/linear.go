package alexnet

import (
	"fmt"
	"hash"

	"github.com/chewxy/hm"
	"gonum.org/v1/gonum/blas"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// A linear layer as custom gorgonia ops: y = x W^T + b with W stored [out, in]
// as PyTorch does. With gorgonia's Mul the weight had to be transposed into a
// copy every step (9.4M floats for the seed's first FC layer) and the bias
// broadcast into another; sgemm reads W transposed for free.

type linearKind int

const (
	linearForward     linearKind = iota // (x, w, b) -> y
	linearGradInput                     // (w, dy) -> dx
	linearGradWeights                   // (x, dy) -> dw
	linearGradBias                      // (dy) -> db
)

var linearKindNames = [...]string{"Linear", "LinearGradInput", "LinearGradWeights", "LinearGradBias"}

type linearOp struct {
	batch, in, out int
	kind           linearKind
	scratch        *opScratch
	// noInputGrad marks a layer whose input needs no gradient (the first
	// of the classifier when the features are frozen): the op computes none,
	// a GEMM as large as the weights' gradient saved.
	noInputGrad bool
}

func linear(x, w, b *G.Node, l Linear, batch int, noInputGrad bool) (*G.Node, error) {
	return G.ApplyOp(linearOp{batch: batch, in: l.In, out: l.Out, kind: linearForward, scratch: &opScratch{}, noInputGrad: noInputGrad}, x, w, b)
}

func (op linearOp) Arity() int {
	switch op.kind {
	case linearGradBias:
		return 1
	case linearForward:
		return 3
	}
	return 2
}

func (op linearOp) Type() hm.Type {
	a := hm.TypeVariable('a')
	t2 := G.TensorType{Dims: 2, Of: a}
	t1 := G.TensorType{Dims: 1, Of: a}
	switch op.kind {
	case linearForward:
		return hm.NewFnType(t2, t2, t1, t2)
	case linearGradBias:
		return hm.NewFnType(t2, t1)
	}
	return hm.NewFnType(t2, t2, t2)
}

func (op linearOp) shape() tensor.Shape {
	switch op.kind {
	case linearForward:
		return tensor.Shape{op.batch, op.out}
	case linearGradInput:
		return tensor.Shape{op.batch, op.in}
	case linearGradWeights:
		return tensor.Shape{op.out, op.in}
	}
	return tensor.Shape{op.out}
}

func (op linearOp) InferShape(...G.DimSizer) (tensor.Shape, error) { return op.shape(), nil }
func (op linearOp) ReturnsPtr() bool                               { return false }
func (op linearOp) CallsExtern() bool                              { return true }
func (op linearOp) OverwritesInput() int                           { return -1 }
func (op linearOp) WriteHash(h hash.Hash)                          { fmt.Fprint(h, op.String()) }
func (op linearOp) Hashcode() uint32                               { return hashOf(op) }
func (op linearOp) String() string {
	return fmt.Sprintf("%s{%d->%d b%d}", linearKindNames[op.kind], op.in, op.out, op.batch)
}

func (op linearOp) DiffWRT(int) []bool {
	if op.kind == linearForward {
		return []bool{!op.noInputGrad, true, true}
	}
	return nil
}

func (op linearOp) SymDiff(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error) {
	if op.kind != linearForward {
		return nil, fmt.Errorf("alexnet: %v has no gradient", op)
	}
	x, w := inputs[0], inputs[1]
	next := func(k linearKind, in ...*G.Node) (*G.Node, error) {
		o := op
		o.kind, o.scratch = k, &opScratch{}
		return G.ApplyOp(o, in...)
	}
	var dx *G.Node
	if !op.noInputGrad {
		var err error
		if dx, err = next(linearGradInput, w, grad); err != nil {
			return nil, err
		}
	}
	dw, err := next(linearGradWeights, x, grad)
	if err != nil {
		return nil, err
	}
	db, err := next(linearGradBias, grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, dw, db}, nil
}

func (op linearOp) Do(in ...G.Value) (G.Value, error) {
	return op.UsePreallocDo(op.scratch.output(op.shape()), in...)
}

// UsePreallocDo computes into prealloc when it has the output's shape,
// overwriting all of it.
func (op linearOp) UsePreallocDo(prealloc G.Value, in ...G.Value) (G.Value, error) {
	out, dst, args, err := operands(op, op.shape(), prealloc, in)
	if err != nil {
		return nil, err
	}
	b, n, k := op.batch, op.in, op.out
	switch op.kind {
	// Each piece computes its own columns of the result: every element is one
	// sgemm's, whatever the number of cores.
	case linearForward: // y[b,k] = bias[k] + x[b,n] W[k,n]^T, by ranges of k
		x, w, bias := args[0], args[1], args[2]
		for i := 0; i < b; i++ {
			copy(dst[i*k:(i+1)*k], bias)
		}
		pieces := min(parts, k)
		parallel(pieces, func(p int) {
			lo, hi := span(k, pieces, p)
			sgemm(blas.NoTrans, blas.Trans, b, hi-lo, n, 1, x, n, w[lo*n:], n, 1, dst[lo:], k)
		})
	case linearGradInput: // dx[b,n] = dy[b,k] W[k,n], by ranges of n
		w, dy := args[0], args[1]
		pieces := min(parts, n)
		parallel(pieces, func(p int) {
			lo, hi := span(n, pieces, p)
			sgemm(blas.NoTrans, blas.NoTrans, b, hi-lo, k, 1, dy, k, w[lo:], n, 0, dst[lo:], n)
		})
	case linearGradWeights: // dW[k,n] = dy[b,k]^T x[b,n], by ranges of k
		x, dy := args[0], args[1]
		pieces := min(parts, k)
		parallel(pieces, func(p int) {
			lo, hi := span(k, pieces, p)
			sgemm(blas.Trans, blas.NoTrans, hi-lo, n, b, 1, dy[lo:], k, x, n, 0, dst[lo*n:], n)
		})
	case linearGradBias:
		dy := args[0]
		clear(dst)
		for i := 0; i < b; i++ {
			for j, v := range dy[i*k : (i+1)*k] {
				dst[j] += v
			}
		}
	}
	if op.scratch.computed != nil {
		op.scratch.computed()
	}
	return out, nil
}
