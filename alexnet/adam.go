package alexnet

import (
	"fmt"
	"math"
	"runtime"
	"sync"
)

// AdamConfig holds torch.optim.Adam's hyper-parameters.
type AdamConfig struct {
	LR, Beta1, Beta2, Eps float64
}

// DefaultAdam is the seed's optimiser: lr 2e-4 and PyTorch's defaults.
func DefaultAdam() AdamConfig { return AdamConfig{LR: 2e-4, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8} }

// Validate rejects hyper-parameters Adam cannot use.
func (c AdamConfig) Validate() error {
	switch {
	case !(c.LR > 0) || math.IsInf(c.LR, 0):
		return fmt.Errorf("alexnet: Adam learning rate %g, want > 0", c.LR)
	case c.Beta1 < 0 || c.Beta1 >= 1 || c.Beta2 < 0 || c.Beta2 >= 1:
		return fmt.Errorf("alexnet: Adam betas %g, %g, want [0, 1)", c.Beta1, c.Beta2)
	case !(c.Eps > 0):
		return fmt.Errorf("alexnet: Adam eps %g, want > 0", c.Eps)
	}
	return nil
}

// Adam is torch.optim.Adam (no weight decay, no amsgrad) over a flat vector: M
// and V are its moments in the parameters' layout, Step the number of steps taken.
type Adam struct {
	Config AdamConfig
	M, V   []float32
	Step   int64
}

// NewAdam returns a fresh optimiser for n parameters.
func NewAdam(cfg AdamConfig, n int) (*Adam, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Adam{Config: cfg, M: make([]float32, n), V: make([]float32, n)}, nil
}

// Advance counts one step and returns its coefficients: PyTorch's
// single-tensor Adam computes the bias corrections in double precision and the
// rest in float32.
func (a *Adam) Advance() AdamStep {
	a.Step++
	c := a.Config
	bc1 := 1 - math.Pow(c.Beta1, float64(a.Step))
	bc2 := 1 - math.Pow(c.Beta2, float64(a.Step))
	return AdamStep{
		Beta1: float32(c.Beta1), Beta2: float32(c.Beta2),
		OneMinusBeta1: float32(1 - c.Beta1), OneMinusBeta2: float32(1 - c.Beta2),
		StepSize: float32(c.LR / bc1), BiasCorrection2Sqrt: float32(math.Sqrt(bc2)), Eps: float32(c.Eps),
	}
}

// AdamElement is one element's update, the formula every backend runs:
// params -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), each operation rounded to
// float32 (no fused multiply-add), so that parameters match PyTorch to the
// last few ulps and a GPU kernel compiled without contraction to the bit.
func AdamElement(s AdamStep, p, g, m, v float32) (float32, float32, float32) {
	m = m*s.Beta1 + g*s.OneMinusBeta1
	v = v*s.Beta2 + g*g*s.OneMinusBeta2
	denom := float32(math.Sqrt(float64(v)))/s.BiasCorrection2Sqrt + s.Eps
	return p - s.StepSize*(m/denom), m, v
}

// Update takes one step over the flat vectors with AdamElement: UpdateFrom
// from the first parameter, with the gradient of all of them.
func (a *Adam) Update(params, grad []float32) error { return a.UpdateFrom(0, params, grad) }

// parallelRanges runs fn over [0, n) cut into one range per core (below a
// million elements, one range: the goroutines would cost more than they save).
func parallelRanges(n int, fn func(lo, hi int)) {
	parts := runtime.GOMAXPROCS(0)
	if n < 1<<20 || parts < 2 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	for k := range parts {
		lo, hi := k*n/parts, (k+1)*n/parts
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}
