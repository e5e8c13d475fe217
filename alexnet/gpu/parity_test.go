//go:build cgo && !purego

package gpu_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/alexring/alexring/alexnet"
)

// Tolerances of the GPU model against the CPU's, relative to the largest
// magnitude of the CPU's tensor. The kernels are the CPU's arithmetic bit for
// bit (package kernels tests that); what differs is the GEMMs' summation
// order: one GEMM over the whole batch ([Out][In*K*K] x [In*K*K][B*HW]) where
// the CPU runs one per image and adds the per-image weight gradients in four
// pieces, and a GEMV for the bias gradients where the CPU adds per image.
// Each dot product of k terms (k in the thousands here) then rounds
// differently, by a few float32 ulps (2^-24 ~ 6e-8) growing like sqrt(k),
// and the differences grow through the layers: the measured ones are below
// 1e-6 of the tensor's scale; the tolerances leave a margin of ten or more.
// The loss is exact given the same logits (checked bit for bit).
const (
	tolLogits = 1e-5 // relative to the largest logit; measured up to 7.9e-7
	tolLoss   = 1e-6 // relative; measured 0 at step 1, up to 8.1e-8 at step 3
	tolGrad   = 1e-5 // relative to the tensor's largest gradient; measured up to 4.4e-7
)

// After three Adam steps the parameters are compared element by element,
// absolutely. Adam divides each gradient by its own scale, so a parameter
// moves by about lr whatever its gradient's size: where a gradient element is
// a rounding error away from 0 (a sum that cancels), or its moment m cancels
// over the steps, the two sides' rounding gives it visibly different steps.
// So a few outliers are allowed (measured with OpenBLAS's SkylakeX kernels,
// whose sums part further from oneDNN's than its generic ones: at most 42 of
// 331776 in a tensor, 139 of the seed's 14.6M parameters beyond lr/1000, the
// largest 5.1e-5; with the generic kernels 26 and 7.3e-6), while everything
// else must agree to lr/1000 (measured: a few 1e-8). A wrong mask or
// gradient moves most elements by about lr instead.
const (
	adamNear     = 2e-7 // lr/1000
	adamOutliers = 5e-4 // the fraction of a tensor allowed beyond adamNear, plus one
	adamFar      = 1e-4 // lr/2: no element beyond
)

// TestParity compares the GPU model on the host device with the CPU's Net:
// the logits, the loss, the gradient of each tensor and Finite, then three
// Adam steps with dropout on both sides from the same RNG.
func TestParity(t *testing.T) {
	fixParams, fixImages, fixLabels := fixture(t)
	tiny := randomParams(t, "tiny", 10, 1)
	tinyImages, tinyLabels := randomBatch(tiny.Spec, 3, 2)
	seed := randomParams(t, "seed", 10, 3)
	seedImages, seedLabels := randomBatch(seed.Spec, 2, 4)
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
		t.Run(c.name, func(t *testing.T) {
			batch := len(c.labels)
			checkGradient(t, c.params, batch, c.images, c.labels)
			checkAdamSteps(t, c.params, batch, c.images, c.labels)
		})
	}
}

// checkGradient compares the logits, the loss, the gradient and Finite of one
// step without dropout.
func checkGradient(t *testing.T, params *alexnet.Params, batch int, images []float32, labels []int) {
	spec := params.Spec
	m, _ := newModel(t, params, batch, batch, 0)
	logits, err := m.Logits(images, batch)
	if err != nil {
		t.Fatal(err)
	}
	want, err := newNet(t, cloneParams(params), alexnet.NetOptions{Batch: batch}).Logits(images, batch)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "logits", logits, want, tolLogits)

	grad, err := m.HostVector(spec.NumParams())
	if err != nil {
		t.Fatal(err)
	}
	var lossAt time.Time // where a caller's phase timing splits the step
	start := time.Now()
	st, err := m.Gradient(images, labels, batch, nil, grad, alexnet.Hooks{LossComputed: func() { lossAt = time.Now() }})
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
	if fwd, bwd := lossAt.Sub(start), end.Sub(lossAt); fwd <= 0 || bwd <= 0 {
		t.Errorf("phases forward %v, backward %v; want both positive", fwd, bwd)
	}
	tensors(spec, grad, wantGrad, func(name string, got, want []float32) {
		within(t, "grad "+name, got, want, tolGrad)
	})

	// The loss is the CPU's sum over the model's own logits, bit for bit.
	if want := cpuLoss(logits, labels, spec.Classes); math.Float32bits(st.Loss) != math.Float32bits(want) {
		t.Errorf("loss %v, the CPU's formula over the same logits gives %v", st.Loss, want)
	}
}

// checkAdamSteps runs three steps (gradient with dropout, Adam) on both sides
// and compares each loss and then the parameters. A mask that differed from
// the CPU's would move the loss of step 1 already.
func checkAdamSteps(t *testing.T, params *alexnet.Params, batch int, images []float32, labels []int) {
	const steps = 3
	spec := params.Spec
	m, cfg := newModel(t, params, batch, 0, 0.5)
	cpu := cloneParams(params)
	net := newNet(t, cpu, alexnet.NetOptions{Batch: batch, Train: true, Dropout: 0.5})
	adam := newAdam(t, params)
	grad := make([]float32, spec.NumParams())
	rngGPU, rngCPU := rand.New(rand.NewPCG(5, 6)), rand.New(rand.NewPCG(5, 6))
	for step := 1; step <= steps; step++ {
		st, err := m.Gradient(images, labels, batch, rngGPU, nil, alexnet.Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		loss, err := net.Gradient(images, labels, batch, rngCPU, grad)
		if err != nil {
			t.Fatal(err)
		}
		within(t, fmt.Sprintf("step %d loss", step), []float32{st.Loss}, []float32{loss}, tolLoss)
		if err := m.Update(nil); err != nil {
			t.Fatal(err)
		}
		if err := adam.Update(cpu.Flat, grad); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Download(); err != nil {
		t.Fatal(err)
	}
	if cfg.Adam.Step != steps {
		t.Errorf("Adam counted %d steps, want %d", cfg.Adam.Step, steps)
	}
	tensors(spec, cfg.Params.Flat, cpu.Flat, func(name string, got, want []float32) {
		abs, _ := diff(got, want)
		outliers := 0
		for i := range got {
			if math.Abs(float64(got[i])-float64(want[i])) > adamNear {
				outliers++
			}
		}
		t.Logf("step %d %-19s max |diff| %.3g, %d of %d beyond %.3g", steps, name, abs, outliers, len(got), adamNear)
		if allowed := 1 + int(adamOutliers*float64(len(got))); !(abs <= adamFar) || outliers > allowed {
			t.Errorf("after %d Adam steps %s differs from the CPU's by up to %.3g (tolerance %.3g), %d values by more than %.3g (%d allowed)",
				steps, name, abs, adamFar, outliers, adamNear, allowed)
		}
	})
}

// cpuLoss is alexnet's softmaxCE over logits, with its targets (1/count
// one-hot): the float max, the double sum of exp, float32 log-probabilities
// and a double accumulator.
func cpuLoss(logits []float32, labels []int, k int) float32 {
	var loss float64
	for i, y := range labels {
		z := logits[i*k : (i+1)*k]
		m := z[0]
		for _, v := range z[1:] {
			if v > m {
				m = v
			}
		}
		var sum float64
		for _, v := range z {
			sum += math.Exp(float64(v - m))
		}
		logp := z[y] - m - float32(math.Log(sum))
		loss -= float64(1/float32(len(labels))) * float64(logp)
	}
	return float32(loss)
}
