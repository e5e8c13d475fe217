package alexnet

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// CPU is the Backend of the gorgonia graphs: a training Net over the host
// parameters (so the host state is always current and Upload/Download do
// nothing), an evaluation Net built on the first Logits, and Adam on the host.
type CPU struct {
	cfg   BackendConfig
	train *Net
	eval  *Net
	// own is the gradient that Gradient(nil) keeps for Update(nil).
	own []float32
	// from is where the trained parameters start (cfg.Freeze): the
	// gradient vectors hold Flat[from:]'s.
	from int
}

// NewCPU builds the training graph for cfg's batch (none for batch 0).
func NewCPU(cfg BackendConfig) (*CPU, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &CPU{cfg: cfg}
	var err error
	if c.from, err = cfg.Params.Spec.TrainFrom(cfg.Freeze); err != nil {
		return nil, err
	}
	if err := c.SetBatch(cfg.Batch); err != nil {
		return nil, err
	}
	return c, nil
}

// GCPercent is the Go GC target that cmd/worker sets for a CPU worker,
// unless the environment's GOGC sets one. The graphs' buffers and the
// parameter-sized vectors are most of the heap and live for the whole run,
// so Go's default of 100 lets garbage (the loaders' and the ring's buffers,
// a validation's) grow to as much again before a collection: the seed model
// measured 950 MB peak RSS around 450 MB of live heap (668 MB at 10). At 10
// the collector ran 14 times in the seed's epoch on the flowers, 0.13 s in
// all: its marking is cheap, as the large buffers hold no pointers. The
// library does not set it itself: the GC target is the process's, not a
// backend's (predict, bench and tests keep theirs).
const GCPercent = 10

// Describe names what the graphs convolve and multiply with.
func (c *CPU) Describe() string {
	return "cpu, " + CPUKernelsFor(c.cfg.Params.Spec).Short() + ", " + BLAS
}

// SetBatch rebuilds the training graph when the batch changes.
func (c *CPU) SetBatch(batch int) error {
	if c.train != nil && c.train.Batch == batch {
		return nil
	}
	if batch > 0 && c.cfg.Adam == nil {
		return errors.New("alexnet: an inference backend cannot train")
	}
	var net *Net
	if batch > 0 {
		var err error
		if net, err = NewNet(c.cfg.Params, NetOptions{Batch: batch, Train: true, Dropout: c.cfg.Dropout, TrainFrom: c.from}); err != nil {
			return err
		}
	}
	if c.train != nil {
		c.train.Close()
	}
	c.train, c.cfg.Batch = net, batch
	c.own = nil // bound to the old graph
	return nil
}

// Gradient runs the training graph. The gradient ops write straight into the
// vector given (BindGrad), so that nothing is copied; the classifier's hook
// checks its part before the caller's ready sees it.
func (c *CPU) Gradient(images []float32, labels []int, count int, rng *rand.Rand, grad []float32, hooks Hooks) (Step, error) {
	if c.train == nil {
		return Step{}, errors.New("alexnet: Gradient on an inference backend (batch 0)")
	}
	if grad == nil {
		if c.own == nil {
			c.own = make([]float32, len(c.cfg.Params.Flat)-c.from)
		}
		grad, hooks.ClassifierReady = c.own, nil
	}
	if len(grad) != len(c.cfg.Params.Flat)-c.from {
		return Step{}, fmt.Errorf("%w: gradient of %d for %d trained parameters", ErrBatch, len(grad), len(c.cfg.Params.Flat)-c.from)
	}
	if c.train.bound == nil || &c.train.bound[0] != &grad[0] {
		if !c.train.BindGrad(grad) {
			return Step{}, errors.New("alexnet: the training graph's gradient could not be bound to the flat vector")
		}
	}
	from, classifierFinite := len(grad), true
	if ready := hooks.ClassifierReady; ready != nil {
		var err error
		if from, err = c.train.OnClassifierGradient(func() {
			classifierFinite = allFinite(grad[from:])
			ready()
		}); err != nil {
			return Step{}, err
		}
	} else if c.train.classifierReady != nil {
		if _, err := c.train.OnClassifierGradient(nil); err != nil {
			return Step{}, err
		}
	}
	c.train.OnLoss(hooks.LossComputed)
	loss, err := c.train.Gradient(images, labels, count, rng, grad)
	st := Step{Loss: loss}
	if err != nil {
		return st, err
	}
	st.Finite = !math.IsNaN(float64(loss)) && !math.IsInf(float64(loss), 0) && classifierFinite && allFinite(grad[:from])
	return st, nil
}

// Update steps Adam over the host parameters, which the graphs read.
func (c *CPU) Update(grad []float32) error {
	if grad == nil {
		if c.own == nil {
			return errors.New("alexnet: Update(nil) before any Gradient(nil)")
		}
		grad = c.own
	}
	return c.cfg.Adam.UpdateFrom(c.from, c.cfg.Params.Flat, grad)
}

// Logits runs the evaluation graph, built on the first call.
func (c *CPU) Logits(images []float32, count int) ([]float32, error) {
	if c.eval == nil {
		if c.cfg.EvalBatch < 1 {
			return nil, errors.New("alexnet: this backend was built without an evaluation batch")
		}
		net, err := NewNet(c.cfg.Params, NetOptions{Batch: c.cfg.EvalBatch})
		if err != nil {
			return nil, err
		}
		c.eval = net
	}
	return c.eval.Logits(images, count)
}

// Upload and Download have nothing to copy: the graphs use the host state.
func (c *CPU) Upload() error   { return nil }
func (c *CPU) Download() error { return nil }

// HostVector is plain memory.
func (c *CPU) HostVector(n int) ([]float32, error) { return make([]float32, n), nil }

// Close releases the graphs' machines.
func (c *CPU) Close() error {
	var errs []error
	for _, n := range []**Net{&c.train, &c.eval} {
		if *n != nil {
			errs = append(errs, (*n).Close())
			*n = nil
		}
	}
	return errors.Join(errs...)
}

// allFinite reports whether v holds no NaN or infinity.
func allFinite(v []float32) bool {
	for _, x := range v {
		// x-x is 0 for every finite x, NaN for NaN and the infinities.
		if x-x != 0 {
			return false
		}
	}
	return true
}
