//go:build cgo && !purego

package gpu_test

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/alexnet/gpu"
	"github.com/alexring/alexring/alexnet/gpu/hostdev"
)

// newModel builds the GPU model on a host device from a copy of params, with
// fresh Adam moments; cfg holds its host state.
func newModel(t *testing.T, params *alexnet.Params, batch, evalBatch int, dropout float64) (*gpu.Model, alexnet.BackendConfig) {
	t.Helper()
	cfg := alexnet.BackendConfig{Params: cloneParams(params), Adam: newAdam(t, params), Batch: batch, EvalBatch: evalBatch, Dropout: dropout}
	m, err := gpu.New(newDevice(t), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m, cfg
}

func newDevice(t *testing.T) gpu.Device {
	t.Helper()
	d, err := hostdev.New()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// newNet is the CPU's model over params.
func newNet(t *testing.T, params *alexnet.Params, opt alexnet.NetOptions) *alexnet.Net {
	t.Helper()
	n, err := alexnet.NewNet(params, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func newAdam(t *testing.T, params *alexnet.Params) *alexnet.Adam {
	t.Helper()
	a, err := alexnet.NewAdam(alexnet.DefaultAdam(), len(params.Flat))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func cloneParams(p *alexnet.Params) *alexnet.Params {
	return &alexnet.Params{Spec: p.Spec, Flat: slices.Clone(p.Flat), Layout: p.Layout}
}

// randomParams are the seed's initialisation of a variant.
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

// randomBatch is n normal images and uniform labels.
func randomBatch(spec alexnet.Spec, n int, seed uint64) ([]float32, []int) {
	rng := rand.New(rand.NewPCG(seed, 1))
	images := make([]float32, n*3*spec.Input*spec.Input)
	for i := range images {
		images[i] = float32(rng.NormFloat64())
	}
	labels := make([]int, n)
	for i := range labels {
		labels[i] = rng.IntN(spec.Classes)
	}
	return images, labels
}

// fixture is the PyTorch fixture of package alexnet's parity test: its
// weights, its batch and labels.
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

// diff is the largest |got-want|, and that over the largest |want| (the
// tensor's scale; an all-zero want leaves it absolute). A NaN gives NaN.
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
// the differences.
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

// tensors runs check on each parameter tensor's range of got and want.
func tensors(spec alexnet.Spec, got, want []float32, check func(name string, got, want []float32)) {
	for _, tn := range spec.Layout() {
		r := tn.Offset + tn.Size
		check(tn.Name, got[tn.Offset:r], want[tn.Offset:r])
	}
}

func equalBits(a, b []float32) (int, bool) {
	if len(a) != len(b) {
		return -1, false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i, false
		}
	}
	return 0, true
}
