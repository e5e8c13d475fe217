package alexnet

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func newTinyCPU(t *testing.T, batch int, dropout float64) (*CPU, *Params) {
	t.Helper()
	p := tinyParams(t, 9)
	adam, err := NewAdam(DefaultAdam(), len(p.Flat))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCPU(BackendConfig{Params: p, Adam: adam, Batch: batch, EvalBatch: 3, Dropout: dropout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, p
}

func tinyBatch(p *Params, batch int) ([]float32, []int) {
	rng := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, batch*3*p.Spec.Input*p.Spec.Input)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	labels := make([]int, batch)
	for i := range labels {
		labels[i] = rng.IntN(p.Spec.Classes)
	}
	return x, labels
}

// A world of one keeps the gradient in the backend; a ring's rank gets it in
// its host vector, the classifier's part first. Both train the same bits.
func TestCPUBackendKeptAndHostGradientsAgree(t *testing.T) {
	const batch = 3
	kept, pk := newTinyCPU(t, batch, 0.5)
	host, ph := newTinyCPU(t, batch, 0.5)
	x, labels := tinyBatch(pk, batch)
	grad, err := host.HostVector(len(ph.Flat))
	if err != nil {
		t.Fatal(err)
	}
	from := ph.Spec.ClassifierOffset()
	rk, rh := rand.New(rand.NewPCG(1, 2)), rand.New(rand.NewPCG(1, 2))
	for step := 0; step < 3; step++ {
		sk, err := kept.Gradient(x, labels, batch-1, rk, nil, Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		calls := 0
		var early []float32
		sh, err := host.Gradient(x, labels, batch-1, rh, grad, Hooks{ClassifierReady: func() {
			calls++
			early = append([]float32(nil), grad[from:]...)
		}})
		if err != nil {
			t.Fatal(err)
		}
		if calls != 1 || !equalFloats(early, grad[from:]) {
			t.Fatalf("step %d: the hook ran %d times, classifier part final at the call: %v", step, calls, equalFloats(early, grad[from:]))
		}
		if !sk.Finite || !sh.Finite || math.Float32bits(sk.Loss) != math.Float32bits(sh.Loss) {
			t.Fatalf("step %d: losses %v/%v finite %v/%v", step, sk.Loss, sh.Loss, sk.Finite, sh.Finite)
		}
		if err := kept.Update(nil); err != nil {
			t.Fatal(err)
		}
		if err := host.Update(grad); err != nil {
			t.Fatal(err)
		}
		if !equalFloats(pk.Flat, ph.Flat) {
			t.Fatalf("step %d: the parameters differ", step)
		}
	}
}

func TestCPUBackendReportsNonFinite(t *testing.T) {
	c, p := newTinyCPU(t, 2, 0)
	w, _ := p.View("features.0.weight")
	w[0] = float32(math.Inf(1))
	x, labels := tinyBatch(p, 2)
	st, err := c.Gradient(x, labels, 2, nil, nil, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Finite {
		t.Errorf("an infinite weight gave a finite step (loss %v)", st.Loss)
	}
}

func TestCPUBackendInferenceOnly(t *testing.T) {
	p := tinyParams(t, 9)
	c, err := NewCPU(BackendConfig{Params: p, EvalBatch: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	x, labels := tinyBatch(p, 2)
	if _, err := c.Gradient(x, labels, 2, nil, nil, Hooks{}); err == nil || !strings.Contains(err.Error(), "inference") {
		t.Errorf("Gradient on an inference backend: %v", err)
	}
	logits, err := c.Logits(x, 1)
	if err != nil || len(logits) != p.Spec.Classes {
		t.Errorf("Logits: %d values, %v", len(logits), err)
	}
	for _, bad := range []BackendConfig{{Params: p}, {Params: p, Batch: 2}, {Params: p, Batch: -1, EvalBatch: 1}, {Batch: 1}} {
		if _, err := NewCPU(bad); err == nil {
			t.Errorf("NewCPU(%+v) accepted", bad)
		}
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
