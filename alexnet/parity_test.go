package alexnet

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fixture is what ../shared/reference/pytorch/make_fixture.py wrote into
// testdata/tiny: PyTorch's weights, a batch, and what PyTorch computed from them.
type fixture struct {
	Batch, Steps int
	LR           float64
	params       *Params
	expected     *STFile
	input        []float32
	labels       []int
}

func loadFixture(t *testing.T, dir string) *fixture {
	t.Helper()
	var meta struct {
		Variant      string
		Batch, Steps int
		LR           float64
		Classes      int
	}
	raw, err := os.ReadFile(filepath.Join(dir, "fixture.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		t.Fatal(err)
	}
	params, _, err := LoadModel(filepath.Join(dir, "weights.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if params.Spec.Variant != meta.Variant || params.Spec.Classes != meta.Classes {
		t.Fatalf("fixture weights load as %s/%d classes, fixture.json says %s/%d", params.Spec.Variant, params.Spec.Classes, meta.Variant, meta.Classes)
	}
	exp, err := ReadSafetensors(filepath.Join(dir, "expected.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{Batch: meta.Batch, Steps: meta.Steps, LR: meta.LR, params: params, expected: exp}
	if f.input, err = exp.Tensors["input"].Float32s(); err != nil {
		t.Fatal(err)
	}
	labels, err := exp.Tensors["labels"].Int64s()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range labels {
		f.labels = append(f.labels, int(l))
	}
	return f
}

func (f *fixture) floats(t *testing.T, name string) []float32 {
	t.Helper()
	v, err := f.expected.Tensors[name].Float32s()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

func maxAbsDiff(a, b []float32) (d, scale float64) {
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i])-float64(b[i])))
		scale = math.Max(scale, math.Abs(float64(b[i])))
	}
	return d, scale
}

// TestParityWithPyTorch holds for each kernel path of this build (im2col +
// BLAS, oneDNN): the same tolerances, as both sum in float32 in an order of
// their own.
func TestParityWithPyTorch(t *testing.T) {
	for _, k := range buildKernels() {
		t.Run(string(k), func(t *testing.T) {
			useKernels(t, k)
			parityWithPyTorch(t)
		})
	}
}

func parityWithPyTorch(t *testing.T) {
	f := loadFixture(t, "testdata/tiny")
	spec := f.params.Spec

	eval, err := NewNet(f.params, NetOptions{Batch: f.Batch})
	if err != nil {
		t.Fatal(err)
	}
	defer eval.Close()
	logits, err := eval.Logits(f.input, f.Batch)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := maxAbsDiff(logits, f.floats(t, "logits"))
	t.Logf("eval logits: max |diff| %.3g", d)
	if d > 1e-4 {
		t.Errorf("eval logits differ from PyTorch's by %g (tolerance 1e-4)", d)
	}

	train, err := NewNet(f.params, NetOptions{Batch: f.Batch, Train: true})
	if err != nil {
		t.Fatal(err)
	}
	defer train.Close()
	adam, err := NewAdam(AdamConfig{LR: f.LR, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}, len(f.params.Flat))
	if err != nil {
		t.Fatal(err)
	}
	grad := make([]float32, len(f.params.Flat))
	var lossAt time.Time // where a caller's phase timing splits the step (OnLoss)
	train.OnLoss(func() { lossAt = time.Now() })
	for step := 1; step <= f.Steps; step++ {
		start := time.Now()
		loss, err := train.Gradient(f.input, f.labels, f.Batch, nil, grad)
		end := time.Now()
		if err != nil {
			t.Fatal(err)
		}
		if step == 1 {
			if fwd, bwd := lossAt.Sub(start), end.Sub(lossAt); fwd <= 0 || bwd <= 0 {
				t.Errorf("phases of a gradient step: forward %v, backward %v; want both positive", fwd, bwd)
			}
			want := f.floats(t, "loss")[0]
			t.Logf("loss %v, PyTorch %v", loss, want)
			if math.Abs(float64(loss-want)) > 1e-5 {
				t.Errorf("loss %v, PyTorch %v (tolerance 1e-5)", loss, want)
			}
			for _, tn := range spec.Layout() {
				g := grad[tn.Offset : tn.Offset+tn.Size]
				d, scale := maxAbsDiff(g, f.floats(t, "grad."+tn.Name))
				t.Logf("grad %-20s max |diff| %.3g of max-norm %.3g", tn.Name, d, scale)
				if d > 1e-4*scale {
					t.Errorf("gradient of %s differs by %g, max-norm %g (tolerance 1e-4 relative)", tn.Name, d, scale)
				}
			}
		}
		if err := adam.Update(f.params.Flat, grad); err != nil {
			t.Fatal(err)
		}
		if step == 1 || step == f.Steps {
			for _, tn := range spec.Layout() {
				p := f.params.Flat[tn.Offset : tn.Offset+tn.Size]
				d, _ := maxAbsDiff(p, f.floats(t, fmt.Sprintf("step%d.%s", step, tn.Name)))
				t.Logf("step %d %-20s max |diff| %.3g", step, tn.Name, d)
				if d > 1e-5 {
					t.Errorf("after %d Adam steps %s differs from PyTorch by %g (tolerance 1e-5)", step, tn.Name, d)
				}
			}
		}
	}
}
