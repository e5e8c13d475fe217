package alexnet

import (
	"fmt"
	"hash"
	"hash/fnv"
	"math"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// softmaxCE is softmax cross-entropy as one gorgonia op:
//
//	loss = -sum_i sum_k t[i,k] * log_softmax(z)[i,k]
//
// with t the per-sample target weights: one-hot rows scaled by 1/batch give
// PyTorch's mean CrossEntropyLoss, and zero rows mask out the padding of a short
// last batch. gorgonia's own LogSoftMax takes the max of the wrong row (the first
// element of the whole tensor), which overflows on large logits; this op is stable
// and its gradient is the closed form (softmax(z) * sum_k t[i,k] - t) * dloss.
type softmaxCE struct {
	// computed, when it points at a function, is called once the loss is
	// computed: the end of the forward pass and the start of the backward
	// one, which a tape machine runs as one program (Net.OnLoss).
	computed *func()
}

func (softmaxCE) Arity() int { return 2 }
func (softmaxCE) Type() hm.Type {
	a := hm.TypeVariable('a')
	t := G.TensorType{Dims: 2, Of: a}
	return hm.NewFnType(t, t, a)
}
func (softmaxCE) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	return tensor.ScalarShape(), nil
}
func (softmaxCE) ReturnsPtr() bool     { return false }
func (softmaxCE) CallsExtern() bool    { return false }
func (softmaxCE) OverwritesInput() int { return -1 }
func (op softmaxCE) WriteHash(h hash.Hash) {
	fmt.Fprint(h, op.String())
}
func (op softmaxCE) Hashcode() uint32 { return hashOf(op) }
func (softmaxCE) String() string      { return "SoftmaxCrossEntropy" }

func hashOf(op G.Op) uint32 {
	h := fnv.New32a()
	op.WriteHash(h)
	return h.Sum32()
}

// logSoftmaxRow writes log_softmax(z) into out, max-shifted for stability.
func logSoftmaxRow(z, out []float32) {
	m := z[0]
	for _, v := range z[1:] {
		if v > m {
			m = v
		}
	}
	var sum float64
	for _, v := range z {
		sum += math.Exp(float64(v - m))
	}
	lse := float32(math.Log(sum))
	for k, v := range z {
		out[k] = v - m - lse
	}
}

func denseF32(v G.Value, what string) (*tensor.Dense, []float32, error) {
	d, ok := v.(*tensor.Dense)
	if !ok {
		return nil, nil, fmt.Errorf("alexnet: %s is %T, want a dense tensor", what, v)
	}
	f, ok := d.Data().([]float32)
	if !ok {
		return nil, nil, fmt.Errorf("alexnet: %s holds %T, want float32", what, d.Data())
	}
	return d, f, nil
}

func (op softmaxCE) Do(in ...G.Value) (G.Value, error) {
	zt, z, err := denseF32(in[0], "logits")
	if err != nil {
		return nil, err
	}
	_, t, err := denseF32(in[1], "targets")
	if err != nil {
		return nil, err
	}
	k := zt.Shape()[1]
	row := make([]float32, k)
	var loss float64
	for i := 0; i < len(z)/k; i++ {
		logSoftmaxRow(z[i*k:(i+1)*k], row)
		for j, w := range t[i*k : (i+1)*k] {
			if w != 0 {
				loss -= float64(w) * float64(row[j])
			}
		}
	}
	if op.computed != nil && *op.computed != nil {
		(*op.computed)()
	}
	return G.NewF32(float32(loss)), nil
}

func (softmaxCE) DiffWRT(int) []bool { return []bool{true, false} }

func (op softmaxCE) SymDiff(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error) {
	dz, err := G.ApplyOp(softmaxCEGrad{}, inputs[0], inputs[1], grad)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dz, nil}, nil
}

// softmaxCEGrad is d loss / d logits.
type softmaxCEGrad struct{}

func (softmaxCEGrad) Arity() int { return 3 }
func (softmaxCEGrad) Type() hm.Type {
	a := hm.TypeVariable('a')
	t := G.TensorType{Dims: 2, Of: a}
	return hm.NewFnType(t, t, a, t)
}
func (softmaxCEGrad) InferShape(in ...G.DimSizer) (tensor.Shape, error) {
	s, ok := in[0].(tensor.Shape)
	if !ok {
		return nil, fmt.Errorf("alexnet: logits shape is %T", in[0])
	}
	return s.Clone(), nil
}
func (softmaxCEGrad) ReturnsPtr() bool     { return false }
func (softmaxCEGrad) CallsExtern() bool    { return false }
func (softmaxCEGrad) OverwritesInput() int { return -1 }
func (op softmaxCEGrad) WriteHash(h hash.Hash) {
	fmt.Fprint(h, op.String())
}
func (op softmaxCEGrad) Hashcode() uint32 { return hashOf(op) }
func (softmaxCEGrad) String() string      { return "SoftmaxCrossEntropyGrad" }

func scalarF32(v G.Value) (float32, error) {
	switch s := v.(type) {
	case *G.F32:
		return float32(*s), nil
	case *tensor.Dense:
		if f, ok := s.Data().(float32); ok {
			return f, nil
		}
		if f, ok := s.Data().([]float32); ok && len(f) == 1 {
			return f[0], nil
		}
	}
	return 0, fmt.Errorf("alexnet: loss gradient is %T, want a float32 scalar", v)
}

func (op softmaxCEGrad) Do(in ...G.Value) (G.Value, error) {
	zt, z, err := denseF32(in[0], "logits")
	if err != nil {
		return nil, err
	}
	_, t, err := denseF32(in[1], "targets")
	if err != nil {
		return nil, err
	}
	g, err := scalarF32(in[2])
	if err != nil {
		return nil, err
	}
	k := zt.Shape()[1]
	out := make([]float32, len(z))
	for i := 0; i < len(z)/k; i++ {
		ti := t[i*k : (i+1)*k]
		var w float32
		for _, x := range ti {
			w += x
		}
		oi := out[i*k : (i+1)*k]
		if w == 0 {
			continue // a padding row: no gradient
		}
		logSoftmaxRow(z[i*k:(i+1)*k], oi)
		for j := range oi {
			oi[j] = (float32(math.Exp(float64(oi[j])))*w - ti[j]) * g
		}
	}
	return tensor.New(tensor.WithShape(zt.Shape().Clone()...), tensor.WithBacking(out)), nil
}
