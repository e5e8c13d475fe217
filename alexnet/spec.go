package alexnet

import (
	"fmt"
	"sort"
	"strings"
)

// Spec is one AlexNet: the conv widths, the hidden width of the classifier, the
// input side in pixels and the number of classes. Every shape follows from it.
type Spec struct {
	Variant string // the name the spec was made from ("seed", "full", "tiny", "torchvision")
	Widths  [5]int // output channels of the five convolutions
	Hidden  int    // width of the two hidden linear layers
	Input   int    // input side in pixels (square images)
	Classes int    // outputs of the last linear layer
}

// variants are the named models; the seed's is the default. "torchvision" is
// torchvision.models.alexnet (its widths, its state_dict names), for
// fine-tuning its ImageNet weights: its AdaptiveAvgPool2d((6, 6)) between
// features and classifier is the identity at the 224 input, where the
// features are already 6x6, so the model leaves it out (TestTorchvisionVariant).
var variants = map[string]Spec{
	"seed":        {Variant: "seed", Widths: [5]int{48, 128, 192, 192, 128}, Hidden: 2048, Input: 224},
	"full":        {Variant: "full", Widths: [5]int{96, 256, 384, 384, 256}, Hidden: 4096, Input: 224},
	"tiny":        {Variant: "tiny", Widths: [5]int{8, 16, 24, 24, 16}, Hidden: 64, Input: 67},
	"torchvision": {Variant: "torchvision", Widths: [5]int{64, 192, 384, 256, 256}, Hidden: 4096, Input: 224},
}

// DefaultVariant is the seed's model.
const DefaultVariant = "seed"

// Variants lists the known variant names, sorted.
func Variants() []string {
	names := make([]string, 0, len(variants))
	for n := range variants {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// NewSpec returns the named variant with the given number of classes.
func NewSpec(variant string, classes int) (Spec, error) {
	s, ok := variants[variant]
	if !ok {
		return Spec{}, fmt.Errorf("alexnet: unknown variant %q (known: %s)", variant, strings.Join(Variants(), ", "))
	}
	s.Classes = classes
	return s, s.Validate()
}

// Validate reports a spec whose shapes do not work out.
func (s Spec) Validate() error {
	if s.Classes < 1 {
		return fmt.Errorf("alexnet: %d classes; need at least 1", s.Classes)
	}
	for i, w := range s.Widths {
		if w < 1 {
			return fmt.Errorf("alexnet: conv %d has width %d", i+1, w)
		}
	}
	if s.Hidden < 1 {
		return fmt.Errorf("alexnet: hidden width %d", s.Hidden)
	}
	if side := s.FeatureSide(); side < 1 {
		return fmt.Errorf("alexnet: input side %d is too small: the features shrink to nothing", s.Input)
	}
	return nil
}

// Conv is one convolution of the feature stack, with the pooling after it.
type Conv struct {
	In, Out              int
	Kernel, Stride, Pad  int
	PoolAfter            bool // max-pool 3/2 after the ReLU
	InSide, OutSide      int  // spatial side before and after the convolution
	PooledSide           int  // side after the pooling (OutSide when none)
	WeightName, BiasName string
}

// Linear is one layer of the classifier, with the dropout before it.
type Linear struct {
	In, Out              int
	DropoutBefore        bool
	ReLUAfter            bool
	WeightName, BiasName string
}

// convSide is PyTorch's output side of a convolution or pooling (floor mode).
func convSide(in, kernel, stride, pad int) int {
	if in+2*pad < kernel {
		return 0
	}
	return (in+2*pad-kernel)/stride + 1
}

// Convs is the feature stack: conv 11/4/2, pool, conv 5/1/2, pool, conv 3/1/1 x3,
// pool. The names are the indices PyTorch's nn.Sequential gives them.
func (s Spec) Convs() []Conv {
	geo := []struct {
		kernel, stride, pad, index int
		pool                       bool
	}{{11, 4, 2, 0, true}, {5, 1, 2, 3, true}, {3, 1, 1, 6, false}, {3, 1, 1, 8, false}, {3, 1, 1, 10, true}}
	convs := make([]Conv, len(geo))
	in, side := 3, s.Input
	for i, g := range geo {
		out := convSide(side, g.kernel, g.stride, g.pad)
		pooled := out
		if g.pool {
			pooled = convSide(out, 3, 2, 0)
		}
		convs[i] = Conv{
			In: in, Out: s.Widths[i], Kernel: g.kernel, Stride: g.stride, Pad: g.pad,
			PoolAfter: g.pool, InSide: side, OutSide: out, PooledSide: pooled,
			WeightName: fmt.Sprintf("features.%d.weight", g.index),
			BiasName:   fmt.Sprintf("features.%d.bias", g.index),
		}
		in, side = s.Widths[i], pooled
	}
	return convs
}

// FeatureSide is the spatial side of the last feature map (6 for a 224 input).
func (s Spec) FeatureSide() int {
	convs := s.Convs()
	return convs[len(convs)-1].PooledSide
}

// Flat is the length of the flattened features, the classifier's input.
func (s Spec) Flat() int {
	side := s.FeatureSide()
	return s.Widths[4] * side * side
}

// Linears is the classifier: dropout, linear, ReLU, dropout, linear, ReLU, linear.
func (s Spec) Linears() []Linear {
	return []Linear{
		{In: s.Flat(), Out: s.Hidden, DropoutBefore: true, ReLUAfter: true, WeightName: "classifier.1.weight", BiasName: "classifier.1.bias"},
		{In: s.Hidden, Out: s.Hidden, DropoutBefore: true, ReLUAfter: true, WeightName: "classifier.4.weight", BiasName: "classifier.4.bias"},
		{In: s.Hidden, Out: s.Classes, WeightName: "classifier.6.weight", BiasName: "classifier.6.bias"},
	}
}

// Tensor is one parameter tensor: its state_dict name, its shape as PyTorch
// stores it, and where it lives in the flat vector.
type Tensor struct {
	Name   string
	Shape  []int
	Offset int // index of its first element in the flat vector
	Size   int // number of elements
}

// Layout lists the parameter tensors in PyTorch state_dict order.
func (s Spec) Layout() []Tensor {
	var ts []Tensor
	add := func(name string, shape ...int) {
		size := 1
		for _, d := range shape {
			size *= d
		}
		off := 0
		if n := len(ts); n > 0 {
			off = ts[n-1].Offset + ts[n-1].Size
		}
		ts = append(ts, Tensor{Name: name, Shape: shape, Offset: off, Size: size})
	}
	for _, c := range s.Convs() {
		add(c.WeightName, c.Out, c.In, c.Kernel, c.Kernel)
		add(c.BiasName, c.Out)
	}
	for _, l := range s.Linears() {
		add(l.WeightName, l.Out, l.In)
		add(l.BiasName, l.Out)
	}
	return ts
}

// NumParams is the length of the flat parameter vector.
func (s Spec) NumParams() int {
	l := s.Layout()
	last := l[len(l)-1]
	return last.Offset + last.Size
}
