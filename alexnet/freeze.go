package alexnet

import (
	"fmt"
	"strings"
)

// Freeze names the parameters that do not train.
type Freeze string

const (
	// FreezeNone trains every parameter (the default; "" means it too).
	FreezeNone Freeze = "none"
	// FreezeFeatures trains only the classifier: the convolutions keep the
	// values they started from (fine-tuning a pretrained model), their
	// gradient is not computed and Adam does not touch them.
	FreezeFeatures Freeze = "features"
)

// ParseFreeze reads a --freeze value: "", "none" or "features".
func ParseFreeze(s string) (Freeze, error) {
	switch f := Freeze(strings.TrimSpace(s)); f {
	case "", FreezeNone:
		return FreezeNone, nil
	case FreezeFeatures:
		return f, nil
	}
	return "", fmt.Errorf("alexnet: freeze %q: want none or features", s)
}

// TrainFrom is where the trained parameters start in the flat vector: 0
// for FreezeNone, the classifier's offset for FreezeFeatures. The features
// come first in the layout, so the trained part is always one tail, which the
// gradient, Adam and the ring take as one range.
func (s Spec) TrainFrom(f Freeze) (int, error) {
	f, err := ParseFreeze(string(f))
	if err != nil {
		return 0, err
	}
	if f == FreezeFeatures {
		return s.ClassifierOffset(), nil
	}
	return 0, nil
}

// UpdateFrom takes one Adam step over params[from:] with grad, the gradient
// of that tail (len(params)-from values); the parameters and moments before
// from are not read or written. UpdateFrom(0, ...) is Update.
func (a *Adam) UpdateFrom(from int, params, grad []float32) error {
	if len(params) != len(a.M) || from < 0 || from > len(params) || len(grad) != len(params)-from {
		return fmt.Errorf("alexnet: Adam over %d values from %d given %d parameters and %d gradients", len(a.M), from, len(params), len(grad))
	}
	s := a.Advance()
	m, v, p := a.M[from:], a.V[from:], params[from:]
	// Element-wise, so splitting the vector over the cores changes no bit.
	parallelRanges(len(p), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			p[i], m[i], v[i] = AdamElement(s, p[i], grad[i], m[i], v[i])
		}
	})
	return nil
}
