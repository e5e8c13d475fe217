package alexnet

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// buildMu serialises graph construction: gorgonia keeps global counters and
// shared constant nodes while a graph is built (running machines is safe).
var buildMu sync.Mutex

// Net is the model as one gorgonia graph of a fixed batch size, over parameters
// that are views of a Params' flat vector: Adam writing Params.Flat changes what
// the next run computes, with no copy. A training Net computes the loss and the
// flat gradient; an evaluation Net (no Grad, no dropout) only the logits. Both
// may share one Params.
type Net struct {
	Spec  Spec
	Batch int

	params  *Params
	train   bool
	dropout float64
	// trainFrom is NetOptions.TrainFrom; grads are those of
	// params.Layout[gradFirst:], the tensors from there.
	trainFrom, gradFirst int

	g       *G.ExprGraph
	vm      G.VM
	input   []float32 // [B,3,S,S], the x node's backing
	targets []float32 // [B,K], the loss weights (training only)
	masks   [][]float32
	logits  *G.Node
	loss    *G.Node
	grads   G.Nodes   // in Layout order, from Layout[gradFirst]
	bound   []float32 // the gradient vector of BindGrad

	// OnClassifierGradient's hook: the classifier's gradient ops, those still
	// to run in this Gradient call, and what to call when none is left.
	classifierOps, classifierLeft int
	classifierReady               func()

	// onLoss is OnLoss's hook, which the loss op calls.
	onLoss func()
}

// NetOptions choose what a Net computes.
type NetOptions struct {
	Batch int
	// Train builds the loss and its gradient; otherwise the Net only evaluates.
	Train bool
	// Dropout is the drop probability on the classifier's two dropout layers in
	// training (the seed's is 0.5; 0 turns dropout off).
	Dropout float64
	// TrainFrom is the first parameter of the flat vector that trains (0, or
	// Spec.TrainFrom's offset to freeze the features): the gradient is that
	// of Flat[TrainFrom:], and the backward pass stops where nothing before
	// it needs one.
	TrainFrom int
}

// NewNet builds the graph for params' spec.
func NewNet(params *Params, opt NetOptions) (*Net, error) {
	if opt.Batch < 1 {
		return nil, fmt.Errorf("alexnet: batch size %d", opt.Batch)
	}
	if opt.Dropout < 0 || opt.Dropout >= 1 {
		return nil, fmt.Errorf("alexnet: dropout probability %g, want [0, 1)", opt.Dropout)
	}
	n := &Net{Spec: params.Spec, Batch: opt.Batch, params: params, train: opt.Train, trainFrom: opt.TrainFrom, gradFirst: -1}
	if opt.Train {
		n.dropout = opt.Dropout
	}
	for i, t := range params.Layout {
		if t.Offset == opt.TrainFrom {
			n.gradFirst = i
			break
		}
	}
	if n.gradFirst < 0 {
		return nil, fmt.Errorf("alexnet: training from parameter %d, which does not start a tensor of the %s model", opt.TrainFrom, params.Spec.Variant)
	}
	buildMu.Lock()
	err := n.build()
	buildMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("alexnet: build %s graph, batch %d: %w", n.Spec.Variant, n.Batch, err)
	}
	return n, nil
}

func (n *Net) build() error {
	s, b := n.Spec, n.Batch
	g := G.NewGraph()
	n.g = g
	tensorNode := func(name string, backing []float32, shape ...int) *G.Node {
		t := tensor.New(tensor.WithShape(shape...), tensor.WithBacking(backing))
		return G.NewTensor(g, tensor.Float32, len(shape), G.WithShape(shape...), G.WithName(name), G.WithValue(t))
	}
	var weights G.Nodes
	param := func(name string, shape ...int) (*G.Node, error) {
		v, err := n.params.View(name)
		if err != nil {
			return nil, err
		}
		node := tensorNode(name, v, shape...)
		weights = append(weights, node)
		return node, nil
	}

	n.input = make([]float32, b*3*s.Input*s.Input)
	x := tensorNode("input", n.input, b, 3, s.Input, s.Input)
	var err error
	kernels := CPUKernelsFor(s).Kernels
	for _, c := range s.Convs() {
		w, err := param(c.WeightName, c.Out, c.In, c.Kernel, c.Kernel)
		if err != nil {
			return err
		}
		bias, err := param(c.BiasName, c.Out)
		if err != nil {
			return err
		}
		if x, err = conv2d(x, w, bias, c, b, kernels); err != nil {
			return fmt.Errorf("%s: %w", c.WeightName, err)
		}
		if x, err = relu(x); err != nil {
			return err
		}
		if c.PoolAfter {
			if x, err = maxPool(x, b, c.Out, c.OutSide, 3, 2); err != nil {
				return err
			}
		}
	}
	if x, err = G.Reshape(x, tensor.Shape{b, s.Flat()}); err != nil {
		return err
	}
	for _, l := range s.Linears() {
		if l.DropoutBefore && n.dropout > 0 {
			mask := make([]float32, b*l.In)
			n.masks = append(n.masks, mask)
			if x, err = applyMask(x, tensorNode(l.WeightName+".dropout", mask, b, l.In)); err != nil {
				return err
			}
		}
		w, err := param(l.WeightName, l.Out, l.In)
		if err != nil {
			return err
		}
		bias, err := param(l.BiasName, l.Out)
		if err != nil {
			return err
		}
		// The classifier's input needs a gradient only when a convolution trains.
		noInputGrad := l.WeightName == s.Linears()[0].WeightName && n.trainFrom >= s.ClassifierOffset()
		if x, err = linear(x, w, bias, l, b, noInputGrad); err != nil {
			return fmt.Errorf("%s: %w", l.WeightName, err)
		}
		if l.ReLUAfter {
			if x, err = relu(x); err != nil {
				return err
			}
		}
	}
	n.logits = x
	if !n.train {
		n.vm = G.NewTapeMachine(g)
		return nil
	}
	n.targets = make([]float32, b*s.Classes)
	if n.loss, err = G.ApplyOp(softmaxCE{computed: &n.onLoss}, x, tensorNode("targets", n.targets, b, s.Classes)); err != nil {
		return err
	}
	// Only the trained tensors': gorgonia then builds no backward op for a
	// layer that no trained tensor feeds (the frozen convolutions).
	if n.grads, err = G.Grad(n.loss, weights[n.gradFirst:]...); err != nil {
		return fmt.Errorf("gradient: %w", err)
	}
	n.vm = G.NewTapeMachine(g)
	return nil
}

// BindGrad makes the gradient ops write straight into grad (the flat
// gradient, Layout order) instead of memory of their own, so that Gradient
// into the same vector copies nothing: 58 MB less, and one pass over them
// less, for the seed model. It reports whether every parameter's gradient op
// could be bound.
func (n *Net) BindGrad(grad []float32) bool {
	if !n.train || len(grad) != len(n.params.Flat)-n.trainFrom {
		return false
	}
	all := true
	for i, t := range n.params.Layout[n.gradFirst:] {
		var s *opScratch
		switch op := n.grads[i].Op().(type) {
		case convOp:
			s = op.scratch
		case linearOp:
			s = op.scratch
		}
		if s == nil {
			all = false
			continue
		}
		lo, hi := t.Offset-n.trainFrom, t.Offset-n.trainFrom+t.Size
		s.out = tensor.New(tensor.WithShape(n.grads[i].Shape().Clone()...), tensor.WithBacking(grad[lo:hi:hi]))
	}
	n.bound = nil
	if all {
		n.bound = grad
	}
	return all
}

// OnClassifierGradient makes every later Gradient call ready as soon as the
// classifier's gradients are final in the bound gradient vector, and returns
// where they start in it. The backward pass computes them first, before the
// convolutions', so a caller can all-reduce grad[from:] (93% of the seed
// model's gradient) while the convolutions' backward runs. ready runs once per
// Gradient that succeeds, at the latest as it returns; it must not touch the
// convolutions' gradients, which are still being written. It needs BindGrad;
// a nil ready removes the hook.
func (n *Net) OnClassifierGradient(ready func()) (from int, err error) {
	if n.bound == nil {
		return 0, errors.New("alexnet: OnClassifierGradient needs the gradient bound with BindGrad")
	}
	first := -1
	for i, t := range n.params.Layout {
		if t.Name == n.Spec.Linears()[0].WeightName {
			first = i
			break
		}
	}
	if first < 0 {
		return 0, fmt.Errorf("alexnet: no %s in the parameter layout", n.Spec.Linears()[0].WeightName)
	}
	if first < n.gradFirst { // the classifier trains whatever else is frozen
		return 0, errors.New("alexnet: OnClassifierGradient with part of the classifier frozen")
	}
	var scratches []*opScratch
	for _, g := range n.grads[first-n.gradFirst:] {
		op, ok := g.Op().(linearOp)
		if !ok {
			return 0, fmt.Errorf("alexnet: the classifier's gradient %v is not a linear op", g.Op())
		}
		scratches = append(scratches, op.scratch)
	}
	n.classifierReady, n.classifierOps = ready, len(scratches)
	for _, s := range scratches {
		s.computed = nil
		if ready != nil {
			s.computed = func() {
				if n.classifierLeft--; n.classifierLeft == 0 {
					n.classifierReady()
				}
			}
		}
	}
	return n.params.Layout[first].Offset - n.trainFrom, nil
}

// OnLoss makes every later Gradient call fn as soon as the loss is computed,
// before the backward pass starts: where a caller's phase timing splits the
// forward pass from the backward one (the Net keeps no times). A nil fn
// removes the hook.
func (n *Net) OnLoss(fn func()) { n.onLoss = fn }

// Close releases the machine.
func (n *Net) Close() error {
	if n.vm == nil {
		return nil
	}
	err := n.vm.Close()
	n.vm = nil
	return err
}

// ErrBatch marks inputs that do not fit the Net.
var ErrBatch = errors.New("alexnet: batch does not fit the net")

// load copies count images (each 3*S*S floats, normalised CHW) into the input,
// zeroing the padding rows of a short batch.
func (n *Net) load(images []float32, count int) error {
	per := 3 * n.Spec.Input * n.Spec.Input
	if count < 1 || count > n.Batch || len(images) < count*per {
		return fmt.Errorf("%w: %d images in %d floats, the net takes 1 to %d of %d floats", ErrBatch, count, len(images), n.Batch, per)
	}
	copy(n.input, images[:count*per])
	clear(n.input[count*per:])
	return nil
}

func (n *Net) run() error {
	n.vm.Reset() // without it RunAll silently does nothing the second time
	return n.vm.RunAll()
}

// Logits runs the forward pass on count images and returns count*K logits
// (a fresh slice).
func (n *Net) Logits(images []float32, count int) ([]float32, error) {
	if err := n.load(images, count); err != nil {
		return nil, err
	}
	if n.train {
		// Training graphs need targets; evaluation belongs in an eval Net.
		return nil, errors.New("alexnet: Logits called on a training net; build one with Train false")
	}
	if err := n.run(); err != nil {
		return nil, fmt.Errorf("alexnet: forward: %w", err)
	}
	out := n.logits.Value().Data().([]float32)
	return append([]float32(nil), out[:count*n.Spec.Classes]...), nil
}

// Gradient runs forward and backward on count images with their labels and
// writes the flat gradient (Layout order, mean over the count real samples) into
// grad: that of Flat[TrainFrom:], grad[i] for Flat[TrainFrom+i]. rng draws the dropout masks (nil only when dropout is off). It returns
// the mean loss.
func (n *Net) Gradient(images []float32, labels []int, count int, rng *rand.Rand, grad []float32) (float32, error) {
	if !n.train {
		return 0, errors.New("alexnet: Gradient called on an evaluation net")
	}
	if err := n.load(images, count); err != nil {
		return 0, err
	}
	if len(labels) < count || len(grad) != len(n.params.Flat)-n.trainFrom {
		return 0, fmt.Errorf("%w: %d labels for %d images, gradient of %d for %d trained parameters", ErrBatch, len(labels), count, len(grad), len(n.params.Flat)-n.trainFrom)
	}
	if n.classifierReady != nil && (n.bound == nil || &grad[0] != &n.bound[0]) {
		return 0, errors.New("alexnet: with OnClassifierGradient, Gradient must write into the bound gradient vector")
	}
	k := n.Spec.Classes
	clear(n.targets)
	for i, y := range labels[:count] {
		if y < 0 || y >= k {
			return 0, fmt.Errorf("%w: label %d of sample %d outside [0, %d)", ErrBatch, y, i, k)
		}
		n.targets[i*k+y] = 1 / float32(count)
	}
	if n.dropout > 0 {
		if rng == nil {
			return 0, errors.New("alexnet: dropout needs an RNG")
		}
		DrawMasks(rng, n.dropout, n.masks)
	}
	n.classifierLeft = n.classifierOps
	if err := n.run(); err != nil {
		return 0, fmt.Errorf("alexnet: forward/backward: %w", err)
	}
	for i, t := range n.params.Layout[n.gradFirst:] {
		v := n.grads[i].Value()
		if v == nil {
			return 0, fmt.Errorf("alexnet: no gradient for %s", t.Name)
		}
		d, ok := v.Data().([]float32)
		if !ok || len(d) != t.Size {
			return 0, fmt.Errorf("alexnet: gradient of %s has %d values, want %d", t.Name, len(d), t.Size)
		}
		if dst := grad[t.Offset-n.trainFrom : t.Offset-n.trainFrom+t.Size]; &dst[0] != &d[0] {
			copy(dst, d) // not bound (BindGrad), or bound to another vector
		}
	}
	if n.classifierReady != nil && n.classifierLeft > 0 { // an op of the classifier did not run
		n.classifierLeft = 0
		n.classifierReady()
	}
	loss, err := scalarF32(n.loss.Value())
	if err != nil {
		return 0, err
	}
	return loss, nil
}
