package alexnet

import (
	"errors"
	"fmt"
	"math/rand/v2"
)

// Backend is where a rank's model computes: the seam between the trainer and
// the hardware. The trainer keeps the host copies of the state (Params.Flat,
// Adam's M and V, in state_dict order) for the ring, the checkpoints and the
// checksums; a backend may keep its own copies (device memory) and says when
// the two are synchronised with Upload and Download. The CPU graph (NewCPU) is
// one implementation, the GPU (package alexnet/cuda, build tag cuda) another.
type Backend interface {
	// Describe says what computes, for the logs ("cpu, openblas",
	// "cuda:0 NVIDIA H200, conv gemm").
	Describe() string
	// SetBatch sets the training batch (a re-formed ring may change it);
	// 0 frees the training buffers.
	SetBatch(batch int) error
	// Gradient runs forward and backward on count images (NCHW, normalised)
	// with their labels: the flat gradient (mean over the count real
	// samples), the mean loss and whether every gradient value is finite.
	// The gradient is that of the trained parameters, Flat[TrainFrom:]
	// (BackendConfig.Freeze): grad holds NumParams-TrainFrom values, grad[i]
	// for Flat[TrainFrom+i], and the frozen ones' is never computed.
	// rng draws the dropout masks (DrawMasks). With grad nil the gradient
	// stays in the backend for Update(nil) (a world of one: nothing to
	// average); otherwise it is written into grad, a vector from HostVector.
	// hooks are called as the call reaches their points (Hooks).
	Gradient(images []float32, labels []int, count int, rng *rand.Rand, grad []float32, hooks Hooks) (Step, error)
	// Update takes one Adam step (Adam.Step counts it) on the backend's
	// trained parameters with grad, the averaged gradient, or with nil the
	// one the last Gradient kept; frozen parameters and their moments stay
	// as they are.
	Update(grad []float32) error
	// Logits evaluates count images (no dropout) and returns count*K logits,
	// a fresh slice.
	Logits(images []float32, count int) ([]float32, error)
	// Upload makes the backend's parameters and moments those of the host
	// (after a broadcast or a restore); Download copies the backend's into
	// the host's (before a checkpoint, a checksum or a broadcast).
	Upload() error
	Download() error
	// HostVector allocates n zeroed floats for the gradient's trips between
	// the backend and the ring (page-locked memory on a GPU).
	HostVector(n int) ([]float32, error)
	// Close releases what the backend holds; closing twice is safe.
	Close() error
}

// Hooks let the caller of Gradient act at two points of the call, on its
// goroutine, before it returns; each is optional and called at most once. The
// backend keeps no times: the caller's phase timing (the worker's trainer)
// splits the forward pass from the backward one at LossComputed.
type Hooks struct {
	// LossComputed runs as soon as the forward pass has computed the loss,
	// before the backward pass starts.
	LossComputed func()
	// ClassifierReady runs, with a grad given, as soon as
	// grad[ClassifierOffset()-TrainFrom:] is final and checked, while the
	// rest of the backward pass may still run; it must not touch grad below
	// that offset.
	ClassifierReady func()
}

// Step is what a Gradient call found.
type Step struct {
	Loss float32
	// Finite is false when the loss or a gradient value is NaN or infinite.
	Finite bool
}

// BackendConfig is what every backend is built from.
type BackendConfig struct {
	Params    *Params // the host parameters (the backend starts from them)
	Adam      *Adam   // the host optimiser state (Step, M, V); nil with Batch 0
	Batch     int     // training batch per rank; 0: inference only (predict)
	EvalBatch int     // evaluation batch (Logits); 0: no evaluation
	Dropout   float64 // the classifier's dropout probability in training
	Freeze    Freeze  // the parameters that do not train ("": none)
}

// Validate rejects a config no backend can build.
func (c BackendConfig) Validate() error {
	switch {
	case c.Params == nil:
		return errors.New("alexnet: backend without parameters")
	case c.Batch < 0 || c.EvalBatch < 0 || c.Batch == 0 && c.EvalBatch == 0:
		return fmt.Errorf("alexnet: batch size %d, evaluation batch size %d: want a positive one", c.Batch, c.EvalBatch)
	case c.Batch > 0 && c.Adam == nil:
		return errors.New("alexnet: a training backend without an optimiser")
	case c.Adam != nil && (len(c.Adam.M) != len(c.Params.Flat) || len(c.Adam.V) != len(c.Params.Flat)):
		return fmt.Errorf("alexnet: Adam over %d values for %d parameters", len(c.Adam.M), len(c.Params.Flat))
	case c.Dropout < 0 || c.Dropout >= 1:
		return fmt.Errorf("alexnet: dropout probability %g, want [0, 1)", c.Dropout)
	}
	if _, err := ParseFreeze(string(c.Freeze)); err != nil {
		return err
	}
	return nil
}

// ClassifierOffset is where the classifier's parameters start in the flat
// vector: the part of the gradient a backward pass finishes first.
func (s Spec) ClassifierOffset() int {
	first := s.Linears()[0].WeightName
	for _, t := range s.Layout() {
		if t.Name == first {
			return t.Offset
		}
	}
	panic("alexnet: no " + first + " in the layout") // Layout always has it
}

// MaskSizes are the lengths of the classifier's dropout masks for a batch, in
// the order Gradient draws them.
func (s Spec) MaskSizes(batch int) []int {
	var sizes []int
	for _, l := range s.Linears() {
		if l.DropoutBefore {
			sizes = append(sizes, batch*l.In)
		}
	}
	return sizes
}

// DrawMasks fills the dropout masks, in order, from rng: 0 with probability p,
// else 1/(1-p). Every backend draws through it, so the same RNG state gives
// the same masks on the CPU and on a GPU.
func DrawMasks(rng *rand.Rand, p float64, masks [][]float32) {
	keep := float32(1 / (1 - p))
	for _, m := range masks {
		for i := range m {
			if rng.Float64() < p {
				m[i] = 0
			} else {
				m[i] = keep
			}
		}
	}
}

// AdamStep is one step's coefficients, in the float32 values Update uses, so
// that a device kernel given them computes the same bits.
type AdamStep struct {
	Beta1, Beta2, OneMinusBeta1, OneMinusBeta2, StepSize, BiasCorrection2Sqrt, Eps float32
}

// Compute is where a rank computes: the name of its device for the logs and
// the coordinator ("cpu", "cuda:0"), the backend's constructor, and whether
// its backward pass leaves the CPU free (a GPU's does), which overlaps the
// classifier's all-reduce with the convolutions' backward.
type Compute struct {
	Device   string
	New      func(BackendConfig) (Backend, error)
	FreesCPU bool
}

// CPUCompute is the gorgonia graphs on this machine's cores.
func CPUCompute() Compute {
	return Compute{Device: "cpu", New: func(c BackendConfig) (Backend, error) { return NewCPU(c) }}
}
