package alexnet

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Params is the model's parameters: one flat vector in state_dict order, and the
// layout that names its ranges. Gradients, Adam's moments, the all-reduce and the
// checkpoints all use the same layout.
type Params struct {
	Spec   Spec
	Flat   []float32
	Layout []Tensor
}

// NewParams allocates zeroed parameters for spec.
func NewParams(spec Spec) *Params {
	return &Params{Spec: spec, Flat: make([]float32, spec.NumParams()), Layout: spec.Layout()}
}

// View returns the named tensor's range of the flat vector (shared, not copied).
func (p *Params) View(name string) ([]float32, error) {
	for _, t := range p.Layout {
		if t.Name == name {
			return p.Flat[t.Offset : t.Offset+t.Size], nil
		}
	}
	return nil, fmt.Errorf("alexnet: no parameter %q in variant %s", name, p.Spec.Variant)
}

// Init fills the parameters as the seed's _initialize_weights does: Kaiming normal
// (fan_out, ReLU gain) for conv weights, N(0, 0.01) for linear weights, zero
// biases. The draws come from a PCG seeded by seed, so the same seed gives the
// same model on every rank.
func (p *Params) Init(seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x616c6578))
	convs := p.Spec.Convs()
	std := make(map[string]float64)
	for _, c := range convs {
		std[c.WeightName] = math.Sqrt(2 / float64(c.Out*c.Kernel*c.Kernel))
	}
	for _, l := range p.Spec.Linears() {
		std[l.WeightName] = 0.01
	}
	for _, t := range p.Layout {
		v := p.Flat[t.Offset : t.Offset+t.Size]
		s, isWeight := std[t.Name]
		for i := range v {
			if isWeight {
				v[i] = float32(rng.NormFloat64() * s)
			} else {
				v[i] = 0
			}
		}
	}
}
