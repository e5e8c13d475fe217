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

// Update takes one step: params -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), with
// the float32 arithmetic and double-precision bias corrections of PyTorch's
// single-tensor Adam, so that parameters match it to the last few ulps.
func (a *Adam) Update(params, grad []float32) error {
	if len(params) != len(a.M) || len(grad) != len(a.M) {
		return fmt.Errorf("alexnet: Adam over %d values given %d parameters and %d gradients", len(a.M), len(params), len(grad))
	}
	a.Step++
	c := a.Config
	bc1 := 1 - math.Pow(c.Beta1, float64(a.Step))
	bc2 := 1 - math.Pow(c.Beta2, float64(a.Step))
	var (
		b1, b2      = float32(c.Beta1), float32(c.Beta2)
		g1, g2      = float32(1 - c.Beta1), float32(1 - c.Beta2)
		stepSize    = float32(c.LR / bc1)
		bc2Sqrt     = float32(math.Sqrt(bc2))
		eps         = float32(c.Eps)
		m, v, p, gr = a.M, a.V, params, grad[:len(params)]
	)
	// Element-wise, so splitting the vector over the cores changes no bit.
	parallelRanges(len(p), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			g := gr[i]
			mi := m[i]*b1 + g*g1
			vi := v[i]*b2 + g*g*g2
			m[i], v[i] = mi, vi
			denom := float32(math.Sqrt(float64(vi)))/bc2Sqrt + eps
			p[i] -= stepSize * (mi / denom)
		}
	})
	return nil
}

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
