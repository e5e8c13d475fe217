//go:build cgo && !purego

package gpu_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/alexnet/gpu"
	"github.com/alexring/alexring/alexnet/gpu/hostdev"
)

// A short batch is padded with zero images and zero targets, and the masks
// are drawn for the whole batch: the gradient is the CPU's and both RNGs end
// in the same state. The full batch before it leaves a NaN image where the
// padding goes: zero targets alone would not keep it out of the gradient.
func TestShortBatch(t *testing.T) {
	const batch, count = 4, 3
	params := randomParams(t, "tiny", 5, 11)
	images, labels := randomBatch(params.Spec, batch, 12)
	images[len(images)-1] = float32(math.NaN())
	m, _ := newModel(t, params, batch, 0, 0.5)
	net := newNet(t, cloneParams(params), alexnet.NetOptions{Batch: batch, Train: true, Dropout: 0.5})
	grad, err := m.HostVector(params.Spec.NumParams())
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float32, len(grad))
	rngGPU, rngCPU := rand.New(rand.NewPCG(1, 2)), rand.New(rand.NewPCG(1, 2))
	if st, err := m.Gradient(images, labels, batch, rngGPU, grad, alexnet.Hooks{}); err != nil || st.Finite {
		t.Fatalf("a batch with a NaN image: finite %v, error %v", st.Finite, err)
	}
	if _, err := net.Gradient(images, labels, batch, rngCPU, want); err != nil {
		t.Fatal(err)
	}

	st, err := m.Gradient(images, labels, count, rngGPU, grad, alexnet.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	loss, err := net.Gradient(images, labels, count, rngCPU, want)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Finite {
		t.Error("the short batch without the NaN image is not finite")
	}
	within(t, "loss", []float32{st.Loss}, []float32{loss}, tolLoss)
	tensors(params.Spec, grad, want, func(name string, got, want []float32) {
		within(t, "grad "+name, got, want, tolGrad)
	})
	if a, b := rngGPU.Uint64(), rngCPU.Uint64(); a != b {
		t.Errorf("after a short batch the RNGs differ (next draws %#x and %#x): the masks were not drawn as the CPU draws them", a, b)
	}
}

// Gradient into the device only (nil) and into a host vector compute the same
// step; the classifier's hook runs once, before Gradient returns, with its
// part final, and what it writes there (as the ring does) stays.
func TestGradientHostVector(t *testing.T) {
	const batch = 2
	params := randomParams(t, "tiny", 5, 21)
	spec := params.Spec
	images, labels := randomBatch(spec, batch, 22)
	onDevice, cfgDevice := newModel(t, params, batch, 0, 0.5)
	toHost, cfgHost := newModel(t, params, batch, 0, 0.5)
	grad, err := toHost.HostVector(spec.NumParams() + 3)
	if err != nil {
		t.Fatal(err)
	}
	grad = grad[3:] // as the trainer does: its flags come first
	from := spec.ClassifierOffset()

	for step := 1; step <= 2; step++ {
		seed := uint64(step)
		stDevice, err := onDevice.Gradient(images, labels, batch, rand.New(rand.NewPCG(seed, 0)), nil, alexnet.Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		calls := 0
		var classifier []float32
		stHost, err := toHost.Gradient(images, labels, batch, rand.New(rand.NewPCG(seed, 0)), grad, alexnet.Hooks{ClassifierReady: func() {
			calls++
			classifier = slices.Clone(grad[from:])
			for i := range grad[from:] {
				grad[from+i] = 7
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		if calls != 1 {
			t.Fatalf("classifierReady called %d times, want 1", calls)
		}
		if i := slices.IndexFunc(grad[from:], func(v float32) bool { return v != 7 }); i >= 0 {
			t.Errorf("grad[%d] = %v after the hook wrote 7 there: the classifier's part was written after the hook", from+i, grad[from+i])
		}
		copy(grad[from:], classifier)
		if stDevice.Loss != stHost.Loss || stDevice.Finite != stHost.Finite || !stHost.Finite {
			t.Errorf("step %d: loss %v finite %v on the device, %v %v into the host vector", step, stDevice.Loss, stDevice.Finite, stHost.Loss, stHost.Finite)
		}
		if err := onDevice.Update(nil); err != nil {
			t.Fatal(err)
		}
		if err := toHost.Update(grad); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []*gpu.Model{onDevice, toHost} {
		if err := m.Download(); err != nil {
			t.Fatal(err)
		}
	}
	// The gradient came back in the host vector exactly as it was on the
	// device, so the parameters are the same bits.
	if i, ok := equalBits(cfgHost.Params.Flat, cfgDevice.Params.Flat); !ok {
		t.Errorf("parameter %d after Update(grad from the host) %v, after Update(nil) %v", i, cfgHost.Params.Flat[i], cfgDevice.Params.Flat[i])
	}
}

// Adam on the device given the CPU's gradient is the CPU's Adam bit for bit.
func TestUpdateIsCPUAdam(t *testing.T) {
	params := randomParams(t, "tiny", 5, 31)
	m, cfg := newModel(t, params, 1, 0, 0)
	cpu, adam := cloneParams(params), newAdam(t, params)
	grad, err := m.HostVector(len(params.Flat))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(32, 0))
	for range 3 {
		for i := range grad {
			grad[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(10)-8)))
		}
		grad[0], grad[1] = 0, float32(math.Copysign(0, -1))
		if err := m.Update(grad); err != nil {
			t.Fatal(err)
		}
		if err := adam.Update(cpu.Flat, grad); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Download(); err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct {
		name      string
		got, want []float32
	}{{"parameter", cfg.Params.Flat, cpu.Flat}, {"m", cfg.Adam.M, adam.M}, {"v", cfg.Adam.V, adam.V}} {
		if i, ok := equalBits(v.got, v.want); !ok {
			t.Errorf("%s %d after 3 steps: %v on the device, %v on the CPU", v.name, i, v.got[i], v.want[i])
		}
	}
	if cfg.Adam.Step != adam.Step {
		t.Errorf("device Adam counted %d steps, the CPU's %d", cfg.Adam.Step, adam.Step)
	}
}

// Upload replaces the device's state with the host's; Download brings it back.
func TestUploadDownload(t *testing.T) {
	params := randomParams(t, "tiny", 5, 41)
	images, _ := randomBatch(params.Spec, 2, 42)
	m, cfg := newModel(t, params, 2, 2, 0)
	other := randomParams(t, "tiny", 5, 43)
	rng := rand.New(rand.NewPCG(44, 0))
	copy(cfg.Params.Flat, other.Flat)
	for i := range cfg.Adam.M {
		cfg.Adam.M[i], cfg.Adam.V[i] = float32(rng.NormFloat64()), float32(rng.Float64())
	}
	want := [][]float32{slices.Clone(cfg.Params.Flat), slices.Clone(cfg.Adam.M), slices.Clone(cfg.Adam.V)}
	if err := m.Upload(); err != nil {
		t.Fatal(err)
	}
	for _, v := range [][]float32{cfg.Params.Flat, cfg.Adam.M, cfg.Adam.V} {
		clear(v)
	}
	if err := m.Download(); err != nil {
		t.Fatal(err)
	}
	for k, got := range [][]float32{cfg.Params.Flat, cfg.Adam.M, cfg.Adam.V} {
		if i, ok := equalBits(got, want[k]); !ok {
			t.Errorf("vector %d (params, m, v), element %d: %v after the round trip, %v uploaded", k, i, got[i], want[k][i])
		}
	}
	// The device computes with what was uploaded.
	logits, err := m.Logits(images, 2)
	if err != nil {
		t.Fatal(err)
	}
	wantLogits, err := newNet(t, other, alexnet.NetOptions{Batch: 2}).Logits(images, 2)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "logits after Upload", logits, wantLogits, tolLogits)
}

// SetBatch makes the model take the new batch, and only it.
func TestSetBatch(t *testing.T) {
	params := randomParams(t, "tiny", 5, 51)
	images, labels := randomBatch(params.Spec, 3, 52)
	m, _ := newModel(t, params, 2, 0, 0)
	if err := m.SetBatch(-1); err == nil {
		t.Error("SetBatch(-1) succeeded")
	}
	if err := m.SetBatch(0); err != nil {
		t.Errorf("SetBatch(0), which frees the training buffers: %v", err)
	}
	if _, err := m.Gradient(images, labels, 2, nil, nil, alexnet.Hooks{}); err == nil {
		t.Error("Gradient after SetBatch(0) succeeded")
	}
	if err := m.SetBatch(3); err != nil {
		t.Fatal(err)
	}
	grad, err := m.HostVector(len(params.Flat))
	if err != nil {
		t.Fatal(err)
	}
	st, err := m.Gradient(images, labels, 3, nil, grad, alexnet.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float32, len(grad))
	loss, err := newNet(t, cloneParams(params), alexnet.NetOptions{Batch: 3, Train: true}).Gradient(images, labels, 3, nil, want)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "loss at batch 3", []float32{st.Loss}, []float32{loss}, tolLoss)
	within(t, "gradient at batch 3", grad, want, tolGrad)
	if err := m.SetBatch(2); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Gradient(images, labels, 3, nil, grad, alexnet.Hooks{}); !errors.Is(err, alexnet.ErrBatch) {
		t.Errorf("3 images at batch 2: %v, want ErrBatch", err)
	}
}

// Logits runs at the evaluation batch, whatever the training batch, and pads
// a short one.
func TestLogitsEvalBatch(t *testing.T) {
	params := randomParams(t, "tiny", 5, 61)
	images, _ := randomBatch(params.Spec, 3, 62)
	m, _ := newModel(t, params, 2, 5, 0.5)
	got, err := m.Logits(images, 3)
	if err != nil {
		t.Fatal(err)
	}
	want, err := newNet(t, cloneParams(params), alexnet.NetOptions{Batch: 5}).Logits(images, 3)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "logits of 3 at batch 5", got, want, tolLogits)
	big, _ := randomBatch(params.Spec, 6, 63)
	if _, err := m.Logits(big, 6); !errors.Is(err, alexnet.ErrBatch) {
		t.Errorf("6 images at evaluation batch 5: %v, want ErrBatch", err)
	}
	noEval, _ := newModel(t, params, 2, 0, 0)
	if _, err := noEval.Logits(images, 1); err == nil {
		t.Error("Logits without an evaluation batch succeeded")
	}
}

// predict's backend: the parameters and an evaluation pass, no optimiser,
// no training buffers.
func TestInferenceOnly(t *testing.T) {
	params := randomParams(t, "tiny", 5, 64)
	images, labels := randomBatch(params.Spec, 2, 65)
	m, err := gpu.New(newDevice(t), alexnet.BackendConfig{Params: cloneParams(params), EvalBatch: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got, err := m.Logits(images, 1)
	if err != nil {
		t.Fatal(err)
	}
	want, err := newNet(t, cloneParams(params), alexnet.NetOptions{Batch: 1}).Logits(images, 1)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "logits of an inference backend", got, want, tolLogits)
	if _, err := m.Gradient(images, labels, 2, nil, nil, alexnet.Hooks{}); err == nil {
		t.Error("Gradient on an inference backend succeeded")
	}
	if err := m.Update(nil); err == nil || !strings.Contains(err.Error(), "inference") {
		t.Errorf("Update on an inference backend: %v", err)
	}
	if err := m.SetBatch(2); err == nil {
		t.Error("SetBatch(2) on an inference backend succeeded")
	}
	if err := m.Download(); err != nil {
		t.Errorf("Download: %v", err)
	}
}

// Finite is false when only one part of the gradient is non-finite, while
// the loss is finite: each part's flag counts.
func TestNonFinite(t *testing.T) {
	params := randomParams(t, "tiny", 5, 71)
	spec := params.Spec
	images, labels := randomBatch(spec, 2, 72)

	// The convolutions' part: the first conv reads the last pixel only into
	// outputs that the pooling drops (floor mode), so the loss is finite, but
	// their zero gradient times the NaN is NaN in the first conv's weights.
	nan := slices.Clone(images)
	nan[len(nan)-1] = float32(math.NaN())
	m, _ := newModel(t, params, 2, 0, 0)
	checkNonFinite(t, "a NaN last pixel", m, spec, nan, labels, false, true)

	// The classifier's part: classifier.4 outputs 1e-30 whatever its input
	// (zero weights), which classifier.6 scales by 1e30 into class 0: the
	// logits are finite, the gradient through them is ~1e30, times the 1e10
	// that classifier.1 outputs overflows classifier.4's weight gradient; the
	// zero weights stop it there.
	huge := cloneParams(params)
	set := func(name string, v float32, n int) {
		view, err := huge.View(name)
		if err != nil {
			t.Fatal(err)
		}
		for i := range view[:n] {
			view[i] = v
		}
	}
	set("classifier.1.bias", 1e10, spec.Hidden)
	set("classifier.4.weight", 0, spec.Hidden*spec.Hidden)
	set("classifier.4.bias", 1e-30, spec.Hidden)
	set("classifier.6.weight", 1e30, spec.Hidden) // row 0
	m, _ = newModel(t, huge, 2, 0, 0)
	checkNonFinite(t, "an overflowing classifier", m, spec, images, labels, true, false)
}

// checkNonFinite runs one step on the device only and one into a host
// vector, whose parts below and above the classifier's offset must be finite
// as convFinite and classifierFinite say, with a finite loss; Finite must be
// false in both.
func checkNonFinite(t *testing.T, what string, m *gpu.Model, spec alexnet.Spec, images []float32, labels []int, convFinite, classifierFinite bool) {
	t.Helper()
	from := spec.ClassifierOffset()
	st, err := m.Gradient(images, labels, len(labels), nil, nil, alexnet.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	grad, err := m.HostVector(spec.NumParams())
	if err != nil {
		t.Fatal(err)
	}
	stHost, err := m.Gradient(images, labels, len(labels), nil, grad, alexnet.Hooks{ClassifierReady: func() {}})
	if err != nil {
		t.Fatal(err)
	}
	if allFinite(grad[:from]) != convFinite || allFinite(grad[from:]) != classifierFinite || !allFinite([]float32{st.Loss, stHost.Loss}) {
		t.Fatalf("%s: the construction failed: loss %v, the gradient's parts finite %v and %v, want %v and %v",
			what, st.Loss, allFinite(grad[:from]), allFinite(grad[from:]), convFinite, classifierFinite)
	}
	if st.Finite || stHost.Finite {
		t.Errorf("%s: Finite %v (device), %v (host vector); want false", what, st.Finite, stHost.Finite)
	}
}

func allFinite(v []float32) bool {
	return !slices.ContainsFunc(v, func(x float32) bool { return math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) })
}

// Bad inputs are errors (ErrBatch where the CPU says so), never panics, and
// leave the model usable.
func TestErrors(t *testing.T) {
	params := randomParams(t, "tiny", 5, 81)
	n := len(params.Flat)
	images, labels := randomBatch(params.Spec, 2, 82)
	m, _ := newModel(t, params, 2, 0, 0.5)
	grad, err := m.HostVector(n)
	if err != nil {
		t.Fatal(err)
	}
	long, err := m.HostVector(n + 1)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for _, c := range []struct {
		name     string
		images   []float32
		labels   []int
		count    int
		rng      *rand.Rand
		grad     []float32
		errBatch bool
	}{
		{"no image", images, labels, 0, rng, grad, true},
		{"more images than the batch", images, []int{0, 0, 0}, 3, rng, grad, true},
		{"images too short", images[:len(images)-1], labels, 2, rng, grad, true},
		{"a label missing", images, labels[:1], 2, rng, grad, true},
		{"a negative label", images, []int{0, -1}, 2, rng, grad, true},
		{"a label past the classes", images, []int{5, 0}, 2, rng, grad, true},
		{"a gradient vector too long", images, labels, 2, rng, long, true},
		{"a gradient vector not from HostVector", images, labels, 2, rng, make([]float32, n), false},
		{"dropout without an RNG", images, labels, 2, nil, grad, false},
	} {
		_, err := m.Gradient(c.images, c.labels, c.count, c.rng, c.grad, alexnet.Hooks{})
		if err == nil || c.errBatch != errors.Is(err, alexnet.ErrBatch) {
			t.Errorf("%s: %v (want an error, ErrBatch %v)", c.name, err, c.errBatch)
		}
	}
	if err := m.Update(nil); err == nil || !strings.Contains(err.Error(), "before any Gradient") {
		t.Errorf("Update(nil) before any Gradient: %v", err)
	}
	if err := m.Update(long); !errors.Is(err, alexnet.ErrBatch) {
		t.Errorf("Update with %d values for %d parameters: %v, want ErrBatch", n+1, n, err)
	}
	if _, err := m.Gradient(images, labels, 2, rng, grad, alexnet.Hooks{}); err != nil {
		t.Errorf("a good step after the bad ones: %v", err)
	}

	bad := alexnet.BackendConfig{Params: params, Adam: newAdam(t, params), Batch: 0}
	if _, err := gpu.New(newDevice(t), bad, nil); err == nil {
		t.Error("New with batch 0 succeeded")
	}
	short := &alexnet.Params{Spec: params.Spec, Flat: params.Flat[:n-1], Layout: params.Layout}
	adam, _ := alexnet.NewAdam(alexnet.DefaultAdam(), n-1)
	if _, err := gpu.New(newDevice(t), alexnet.BackendConfig{Params: short, Adam: adam, Batch: 1}, nil); err == nil {
		t.Error("New with a parameter vector one short succeeded")
	}

	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("closing twice: %v", err)
	}
	if _, err := m.Gradient(images, labels, 2, rng, nil, alexnet.Hooks{}); err == nil {
		t.Error("Gradient after Close succeeded")
	}
}

// faultyDevice is the host device with one kernel's launches made one item
// too long (which it refuses as an overrun) and allocations failing from the
// allocs-th on.
type faultyDevice struct {
	*hostdev.Device
	kernel string
	allocs int // 0: none fail
}

func (d *faultyDevice) Launch(name string, n int64, args ...any) {
	if name == d.kernel {
		n++
	}
	d.Device.Launch(name, n, args...)
}

func (d *faultyDevice) Alloc(n int) (gpu.Ptr, error) {
	if d.allocs--; d.allocs == 0 {
		return 0, errors.New("out of test memory")
	}
	return d.Device.Alloc(n)
}

// A device's errors come back naming the layer or the buffer, and leave
// nothing half built.
func TestDeviceErrors(t *testing.T) {
	params := randomParams(t, "tiny", 5, 91)
	images, labels := randomBatch(params.Spec, 2, 92)
	cfg := func() alexnet.BackendConfig {
		return alexnet.BackendConfig{Params: cloneParams(params), Adam: newAdam(t, params), Batch: 2, EvalBatch: 2}
	}
	faulty := func(kernel string, allocs int) *faultyDevice {
		d, err := hostdev.New()
		if err != nil {
			t.Fatal(err)
		}
		return &faultyDevice{Device: d, kernel: kernel, allocs: allocs}
	}
	for _, c := range []struct{ kernel, want string }{
		{"relu_backward", "classifier.4.weight backward"}, // the last layer has no ReLU
		{"maxpool_backward", "features.10.weight backward"},
		{"col2im", "features.10.weight backward"},
		{"nchw_to_cnhw", "load 2 images"},
	} {
		m, err := gpu.New(faulty(c.kernel, 0), cfg(), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.Gradient(images, labels, 2, nil, nil, alexnet.Hooks{})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.kernel) {
			t.Errorf("%s overrunning: %v; want an error naming %q", c.kernel, err, c.want)
		}
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	}
	m, err := gpu.New(faulty("im2col", 0), cfg(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Logits(images, 2); err == nil || !strings.Contains(err.Error(), "features.0.weight forward") {
		t.Errorf("im2col overrunning in Logits: %v; want an error naming features.0.weight forward", err)
	}
	m.Close()

	// A SetBatch that cannot allocate leaves a model that says so, until a
	// SetBatch succeeds.
	d := faulty("", 0)
	m, err = gpu.New(d, cfg(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	d.allocs = 3
	if err := m.SetBatch(3); err == nil || !strings.Contains(err.Error(), "out of test memory") {
		t.Errorf("SetBatch(3) with its third allocation failing: %v", err)
	}
	if _, err := m.Gradient(images, labels, 2, nil, nil, alexnet.Hooks{}); err == nil || !strings.Contains(err.Error(), "SetBatch(3) failed") {
		t.Errorf("Gradient after a failed SetBatch(3): %v", err)
	}
	if err := m.SetBatch(3); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Gradient(images, labels, 2, nil, nil, alexnet.Hooks{}); err != nil {
		t.Errorf("Gradient after SetBatch(3) succeeded: %v", err)
	}

	// Every allocation of New failing in turn: an error naming the buffer.
	for allocs := 1; ; allocs++ {
		d := faulty("", allocs)
		m, err := gpu.New(d, cfg(), nil)
		if err == nil {
			m.Close()
			break
		}
		if !strings.Contains(err.Error(), "allocate") || !strings.Contains(err.Error(), "out of test memory") {
			t.Errorf("allocation %d failing: %v", allocs, err)
		}
	}
}
