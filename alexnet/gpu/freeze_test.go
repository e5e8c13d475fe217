//go:build cgo && !purego

package gpu_test

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/alexnet/gpu"
)

// With the features frozen the model computes the classifier's gradient
// only, the CPU's frozen Net's, and its Adam steps leave the features and
// their moments as they were, bit for bit.
func TestFrozenFeatures(t *testing.T) {
	const batch = 3
	params := randomParams(t, "tiny", 5, 31)
	spec := params.Spec
	from := spec.ClassifierOffset()
	images, labels := randomBatch(spec, batch, 32)
	cfg := alexnet.BackendConfig{Params: cloneParams(params), Adam: newAdam(t, params), Batch: batch, Dropout: 0.5, Freeze: alexnet.FreezeFeatures}
	m, err := gpu.New(newDevice(t), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	cpu, cpuAdam := cloneParams(params), newAdam(t, params)
	net := newNet(t, cpu, alexnet.NetOptions{Batch: batch, Train: true, Dropout: 0.5, TrainFrom: from})

	grad, err := m.HostVector(spec.NumParams() - from)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Gradient(images, labels, batch, rand.New(rand.NewPCG(1, 1)), make([]float32, spec.NumParams()), alexnet.Hooks{}); err == nil {
		t.Error("a gradient vector of every parameter was accepted with the features frozen")
	}
	want := make([]float32, len(grad))
	for step := range 3 {
		calls := 0
		st, err := m.Gradient(images, labels, batch, rand.New(rand.NewPCG(uint64(step), 1)), grad, alexnet.Hooks{ClassifierReady: func() { calls++ }})
		if err != nil {
			t.Fatal(err)
		}
		loss, err := net.Gradient(images, labels, batch, rand.New(rand.NewPCG(uint64(step), 1)), want)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Finite || calls != 1 {
			t.Errorf("step %d: finite %v, classifierReady called %d times (want 1)", step, st.Finite, calls)
		}
		within(t, "loss", []float32{st.Loss}, []float32{loss}, tolLoss)
		for _, tn := range spec.Layout() {
			if tn.Offset >= from {
				lo := tn.Offset - from
				within(t, "grad "+tn.Name, grad[lo:lo+tn.Size], want[lo:lo+tn.Size], tolGrad)
			}
		}
		g := grad
		if step == 1 {
			g = nil // the gradient the device kept
		}
		if err := m.Update(g); err != nil {
			t.Fatal(err)
		}
		if err := cpuAdam.UpdateFrom(from, cpu.Flat, want); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Download(); err != nil {
		t.Fatal(err)
	}
	if i, ok := equalBits(cfg.Params.Flat[:from], params.Flat[:from]); !ok {
		t.Errorf("frozen parameter %d changed", i)
	}
	if slices.Equal(cfg.Params.Flat[from:], params.Flat[from:]) {
		t.Error("the classifier did not train")
	}
	within(t, "trained classifier", cfg.Params.Flat[from:], cpu.Flat[from:], tolGrad)
	if slices.ContainsFunc(cfg.Adam.M[:from], func(v float32) bool { return v != 0 }) ||
		slices.ContainsFunc(cfg.Adam.V[:from], func(v float32) bool { return v != 0 }) {
		t.Error("Adam's moments of a frozen parameter are not 0")
	}
}
