//go:build gpu

package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/alexnet/cuda"
)

// Tolerances of the GPU backend against the CPU's alexnet.Net (TF32 off on
// both). The kernels are the CPU's arithmetic bit for bit (TestKernels);
// what differs is the GEMMs' summation order: cuBLAS picks its own blocking
// and split of k, one GEMM covers the whole batch where the CPU runs one per
// image, and cuDNN's algorithms (FFT, Winograd) round differently again. A
// dot product of k terms then differs by some float32 ulps (6e-8) times
// sqrt(k), k up to 4608 here, growing through the layers; on the host device
// (OpenBLAS, package gpu's parity test) the differences are 1e-6 or below.
// The first GPU run measures them; these bounds leave a margin of ten.
const (
	tolLogits = 1e-4 // relative to the largest logit
	tolLoss   = 1e-5 // relative to the loss
	tolGrad   = 1e-3 // relative to the tensor's largest gradient
	// After three Adam steps, absolute: Adam moves a parameter by up to lr
	// (2e-4) per step whatever the gradient's size, so where a gradient is a
	// rounding error away from 0 the two sides may step in opposite
	// directions, 2*lr apart per step, while a wrong mask or gradient moves
	// many elements by that much.
	tolAdam = 3 * 2 * 2e-4
)

// TestModelParity compares the whole GPU backend with the CPU's Net on the
// PyTorch fixture and on the tiny and seed variants, with the model's GEMM
// convolution and with cuDNN's (when it loads): logits, loss, the gradient of
// each tensor (through the pinned vector, with the classifier's part checked
// when the hook fires), then three Adam steps with dropout.
func TestModelParity(t *testing.T) {
	fixParams, fixImages, fixLabels := fixture(t)
	tiny := randomParams(t, "tiny", 10, 1)
	tinyImages, tinyLabels := randomBatch(tiny.Spec, 3, 2)
	seed := randomParams(t, "seed", 10, 3)
	seedImages, seedLabels := randomBatch(seed.Spec, 2, 4)
	for _, conv := range []string{"gemm", "cudnn"} {
		for _, c := range []struct {
			name   string
			params *alexnet.Params
			images []float32
			labels []int
		}{
			{"fixture", fixParams, fixImages, fixLabels},
			{"tiny", tiny, tinyImages, tinyLabels},
			{"seed", seed, seedImages, seedLabels},
		} {
			t.Run(conv+"/"+c.name, func(t *testing.T) {
				checkGradient(t, conv, c.params, c.images, c.labels)
				checkAdamSteps(t, conv, c.params, c.images, c.labels)
			})
		}
	}
}

// newBackend builds the GPU backend from a copy of params with fresh Adam
// moments; it skips the test when conv is cudnn and cuDNN does not load.
func newBackend(t *testing.T, conv string, params *alexnet.Params, batch, evalBatch int, dropout float64) (alexnet.Backend, alexnet.BackendConfig) {
	t.Helper()
	bc := alexnet.BackendConfig{Params: cloneParams(params), Adam: newAdam(t, len(params.Flat)), Batch: batch, EvalBatch: evalBatch, Dropout: dropout}
	b, err := cuda.New(cuda.Config{GPU: 0, Conv: conv}, bc)
	if err != nil {
		if conv == "cudnn" && strings.Contains(err.Error(), "cuDNN did not load") {
			t.Skipf("cuDNN: %v", err)
		}
		t.Fatal(err)
	}
	t.Logf("%s", b.Describe())
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
	return b, bc
}

func checkGradient(t *testing.T, conv string, params *alexnet.Params, images []float32, labels []int) {
	spec, batch := params.Spec, len(labels)
	b, _ := newBackend(t, conv, params, batch, batch, 0)
	logits, err := b.Logits(images, batch)
	if err != nil {
		t.Fatal(err)
	}
	want, err := newNet(t, cloneParams(params), alexnet.NetOptions{Batch: batch}).Logits(images, batch)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "logits", logits, want, tolLogits)

	grad, err := b.HostVector(spec.NumParams())
	if err != nil {
		t.Fatal(err)
	}
	from := spec.ClassifierOffset()
	var early []float32 // grad[from:] when the hook fires
	var lossAt time.Time
	start := time.Now()
	st, err := b.Gradient(images, labels, batch, nil, grad, alexnet.Hooks{
		LossComputed:    func() { lossAt = time.Now() },
		ClassifierReady: func() { early = slices.Clone(grad[from:]) },
	})
	end := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	wantGrad := make([]float32, spec.NumParams())
	wantLoss, err := newNet(t, cloneParams(params), alexnet.NetOptions{Batch: batch, Train: true}).Gradient(images, labels, batch, nil, wantGrad)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "loss", []float32{st.Loss}, []float32{wantLoss}, tolLoss)
	if !st.Finite {
		t.Errorf("Finite is false for a finite batch (loss %v)", st.Loss)
	}
	t.Logf("phases: forward %v, backward %v", lossAt.Sub(start), end.Sub(lossAt))
	if early == nil {
		t.Error("the classifier's hook was not called")
	} else if i, same := equalBits(early, grad[from:]); !same {
		t.Errorf("the classifier's gradient changed after its hook: element %d was %v, is %v (the copy was not done at the mark)", from+i, early[i], grad[from+i])
	}
	for _, tn := range spec.Layout() {
		r := tn.Offset + tn.Size
		within(t, "grad "+tn.Name, grad[tn.Offset:r], wantGrad[tn.Offset:r], tolGrad)
	}
}

func checkAdamSteps(t *testing.T, conv string, params *alexnet.Params, images []float32, labels []int) {
	const steps = 3
	spec, batch := params.Spec, len(labels)
	b, bc := newBackend(t, conv, params, batch, 0, 0.5)
	cpu := cloneParams(params)
	net := newNet(t, cpu, alexnet.NetOptions{Batch: batch, Train: true, Dropout: 0.5})
	adam := newAdam(t, len(params.Flat))
	grad := make([]float32, spec.NumParams())
	rngGPU, rngCPU := rand.New(rand.NewPCG(5, 6)), rand.New(rand.NewPCG(5, 6))
	for step := 1; step <= steps; step++ {
		st, err := b.Gradient(images, labels, batch, rngGPU, nil, alexnet.Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		loss, err := net.Gradient(images, labels, batch, rngCPU, grad)
		if err != nil {
			t.Fatal(err)
		}
		within(t, fmt.Sprintf("step %d loss", step), []float32{st.Loss}, []float32{loss}, tolLoss)
		if err := b.Update(nil); err != nil {
			t.Fatal(err)
		}
		if err := adam.Update(cpu.Flat, grad); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Download(); err != nil {
		t.Fatal(err)
	}
	for _, tn := range spec.Layout() {
		r := tn.Offset + tn.Size
		got, want := bc.Params.Flat[tn.Offset:r], cpu.Flat[tn.Offset:r]
		abs, _ := diff(got, want)
		t.Logf("after %d steps %-19s max |diff| %.3g", steps, tn.Name, abs)
		if !(abs <= tolAdam) {
			t.Errorf("after %d Adam steps %s differs from the CPU's by %.3g (tolerance %.3g)", steps, tn.Name, abs, tolAdam)
		}
	}
}

// fixture is package alexnet's PyTorch fixture: weights, batch, labels.
func fixture(t *testing.T) (*alexnet.Params, []float32, []int) {
	t.Helper()
	dir := filepath.Join("..", "testdata", "tiny")
	params, _, err := alexnet.LoadModel(filepath.Join(dir, "weights.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	exp, err := alexnet.ReadSafetensors(filepath.Join(dir, "expected.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	images, err := exp.Tensors["input"].Float32s()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := exp.Tensors["labels"].Int64s()
	if err != nil {
		t.Fatal(err)
	}
	labels := make([]int, len(raw))
	for i, l := range raw {
		labels[i] = int(l)
	}
	return params, images, labels
}

func randomParams(t *testing.T, variant string, classes int, seed uint64) *alexnet.Params {
	t.Helper()
	spec, err := alexnet.NewSpec(variant, classes)
	if err != nil {
		t.Fatal(err)
	}
	p := alexnet.NewParams(spec)
	p.Init(seed)
	return p
}

func randomBatch(spec alexnet.Spec, n int, seed uint64) ([]float32, []int) {
	rng := rand.New(rand.NewPCG(seed, 1))
	images := randVec(rng, n*3*spec.Input*spec.Input)
	labels := make([]int, n)
	for i := range labels {
		labels[i] = rng.IntN(spec.Classes)
	}
	return images, labels
}

func cloneParams(p *alexnet.Params) *alexnet.Params {
	return &alexnet.Params{Spec: p.Spec, Flat: slices.Clone(p.Flat), Layout: p.Layout}
}

func newAdam(t *testing.T, n int) *alexnet.Adam {
	t.Helper()
	a, err := alexnet.NewAdam(alexnet.DefaultAdam(), n)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func newNet(t *testing.T, params *alexnet.Params, opt alexnet.NetOptions) *alexnet.Net {
	t.Helper()
	n, err := alexnet.NewNet(params, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// diff is the largest |got-want|, and that over the largest |want|.
func diff(got, want []float32) (abs, rel float64) {
	var scale float64
	for i := range want {
		abs = math.Max(abs, math.Abs(float64(got[i])-float64(want[i])))
		scale = math.Max(scale, math.Abs(float64(want[i])))
	}
	if scale == 0 {
		return abs, abs
	}
	return abs, abs / scale
}

// within fails unless got is want to tol relative to want's scale, and logs
// both differences.
func within(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", what, len(got), len(want))
		return
	}
	abs, rel := diff(got, want)
	t.Logf("%-26s max |diff| %.3g, relative %.3g", what, abs, rel)
	if !(rel <= tol) {
		t.Errorf("%s: max |diff| %.3g, relative to the CPU's largest value %.3g; tolerance %.3g", what, abs, rel, tol)
	}
}

func equalBits(a, b []float32) (int, bool) {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i, false
		}
	}
	return 0, len(a) == len(b)
}
