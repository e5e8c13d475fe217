package alexnet

import (
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet/onednn"
)

// buildKernels are the convolution kernels of this build.
func buildKernels() []CPUKernels {
	if onednn.Available {
		return []CPUKernels{KernelsOpenBLAS, KernelsOneDNN}
	}
	return []CPUKernels{KernelsOpenBLAS}
}

// useKernels builds the rest of the test's graphs with k and restores the
// process's choice after it.
func useKernels(t testing.TB, k CPUKernels) {
	t.Helper()
	kernelsMu.Lock()
	old := kernels
	kernelsMu.Unlock()
	if _, err := SetCPUKernels(string(k)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kernelsMu.Lock()
		kernels = old
		kernelsMu.Unlock()
	})
}

func TestChooseCPUKernels(t *testing.T) {
	if _, err := ChooseCPUKernels("fft"); err == nil || !strings.Contains(err.Error(), `--cpu-kernels "fft": want auto, onednn, openblas`) {
		t.Errorf("an unknown name: %v", err)
	}
	k, err := ChooseCPUKernels("openblas")
	if err != nil || k.Kernels != KernelsOpenBLAS || !strings.Contains(k.String(), "im2col + "+BLAS) {
		t.Errorf("openblas: %v, %v", k, err)
	}
	k, err = ChooseCPUKernels("onednn")
	if onednn.Available {
		if err != nil || k.Kernels != KernelsOneDNN || k.OneDNN.Threads < 1 || k.ISA != k.OneDNN.ISA {
			t.Errorf("onednn: %+v, %v", k, err)
		}
	} else if err == nil || !strings.Contains(err.Error(), "no oneDNN") {
		t.Errorf("onednn in a build without it: %v", err)
	}
	k, err = ChooseCPUKernels("auto")
	if err != nil || k.Reason == "" || k.ISA == "" {
		t.Fatalf("auto: %+v, %v", k, err)
	}
	t.Logf("auto: %v", k)
	if want := onednn.Available && jitISA(k.ISA); (k.Kernels == KernelsOneDNN) != want {
		t.Errorf("auto chose %s on ISA %s (oneDNN in the build: %v)", k.Kernels, k.ISA, onednn.Available)
	}
	if !strings.Contains(k.String(), "ISA "+k.ISA) || !strings.Contains(k.String(), "auto: ") {
		t.Errorf("auto's description %q names neither the ISA nor the reason", k)
	}
}

func TestSetCPUKernelsChoosesTheOps(t *testing.T) {
	for _, k := range buildKernels() {
		useKernels(t, k)
		net, err := NewNet(tinyParams(t, 1), NetOptions{Batch: 2, Train: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range net.g.AllNodes() {
			if op, ok := n.Op().(convOp); ok && (op.dnn != nil) != (k == KernelsOneDNN) {
				t.Errorf("%s: op %v", k, op)
			}
		}
		net.Close()
	}
}

// seedGradient is the seed model's loss, flat gradient and evaluation logits
// on one batch with the given kernels.
func seedGradient(t *testing.T, k CPUKernels, p *Params, x []float32, labels []int, batch int) (float32, []float32, []float32) {
	t.Helper()
	useKernels(t, k)
	train, err := NewNet(p, NetOptions{Batch: batch, Train: true})
	if err != nil {
		t.Fatal(err)
	}
	defer train.Close()
	grad := make([]float32, len(p.Flat))
	if !train.BindGrad(grad) {
		t.Fatal("BindGrad failed")
	}
	loss, err := train.Gradient(x, labels, batch, nil, grad)
	if err != nil {
		t.Fatal(err)
	}
	eval, err := NewNet(p, NetOptions{Batch: batch})
	if err != nil {
		t.Fatal(err)
	}
	defer eval.Close()
	logits, err := eval.Logits(x, batch)
	if err != nil {
		t.Fatal(err)
	}
	return loss, grad, logits
}

// The two kernel paths on the seed model, the seed's initialisation: they
// sum in different orders (oneDNN over blocks of 16 channels, its weight
// gradient in onednn.ReduceThreads pieces; im2col + sgemm over the patches
// of each image, the weight gradient in four pieces of the batch), so they
// agree to float32 rounding, not bit for bit. The tolerance, relative to each tensor's largest value, is PyTorch
// parity's (1e-4); the differences measured are some 1e-6.
func TestKernelsAgreeOnTheSeedModel(t *testing.T) {
	if !onednn.Available {
		t.Skip("no oneDNN in this build")
	}
	if testing.Short() {
		t.Skip("the seed model: seconds on two cores")
	}
	spec, _ := NewSpec("seed", 5)
	p := NewParams(spec)
	p.Init(7)
	const batch = 4
	rng := rand.New(rand.NewPCG(5, 6))
	x := make([]float32, batch*3*spec.Input*spec.Input)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	labels := []int{0, 3, 1, 4}
	lb, gb, yb := seedGradient(t, KernelsOpenBLAS, p, x, labels, batch)
	ld, gd, yd := seedGradient(t, KernelsOneDNN, p, x, labels, batch)
	const tol = 1e-4
	if d := math.Abs(float64(lb - ld)); d > 1e-5 {
		t.Errorf("losses %v (openblas) and %v (onednn) differ by %g (tolerance 1e-5)", lb, ld, d)
	}
	d, scale := maxAbsDiff(yd, yb)
	t.Logf("eval logits: max |diff| %.3g of max-norm %.3g", d, scale)
	if d > tol*scale {
		t.Errorf("logits differ by %g of max-norm %g (tolerance %g relative)", d, scale, tol)
	}
	for _, tn := range spec.Layout() {
		d, scale := maxAbsDiff(gd[tn.Offset:tn.Offset+tn.Size], gb[tn.Offset:tn.Offset+tn.Size])
		t.Logf("grad %-20s max |diff| %.3g of max-norm %.3g (%.2g relative)", tn.Name, d, scale, d/scale)
		if d > tol*scale {
			t.Errorf("gradient of %s: the kernels differ by %g, max-norm %g (tolerance %g relative)", tn.Name, d, scale, tol)
		}
	}
}

// With oneDNN, as with im2col + BLAS, a step gives the same bits every time:
// on the same net, on a new one, bound to the flat gradient or copied out.
func TestOneDNNGradientIsDeterministic(t *testing.T) {
	if !onednn.Available {
		t.Skip("no oneDNN in this build")
	}
	useKernels(t, KernelsOneDNN)
	p := tinyParams(t, 5)
	const batch = 3
	x, labels := tinyBatch(p, batch)
	var first []float32
	for run, bind := range []bool{false, true, true} {
		net, err := NewNet(p, NetOptions{Batch: batch, Train: true, Dropout: 0.5})
		if err != nil {
			t.Fatal(err)
		}
		grad := make([]float32, len(p.Flat))
		if bind && !net.BindGrad(grad) {
			t.Fatal("BindGrad could not bind every gradient op")
		}
		for again := range 2 {
			if _, err := net.Gradient(x, labels, batch, rand.New(rand.NewPCG(1, 2)), grad); err != nil {
				t.Fatal(err)
			}
			if first == nil {
				first = append([]float32(nil), grad...)
				continue
			}
			if !equalFloats(grad, first) {
				t.Fatalf("net %d (bound %v), run %d: the gradient differs from the first", run, bind, again)
			}
		}
		net.Close()
	}
	for _, tn := range p.Layout { // every parameter has a gradient, the biases too
		zero := true
		for _, v := range first[tn.Offset : tn.Offset+tn.Size] {
			zero = zero && v == 0
		}
		if zero {
			t.Errorf("the gradient of %s is zero", tn.Name)
		}
	}
}

// Without oneDNN's library on the machine, a build that has oneDNN trains on
// im2col + BLAS under auto and refuses --cpu-kernels onednn, naming the
// library (run in a child process: oneDNN loads once per process).
func TestMissingOneDNNLibraryFallsBack(t *testing.T) {
	if !onednn.Available {
		t.Skip("no oneDNN in this build")
	}
	if os.Getenv("ALEXRING_DNNL_LIBRARY") == "libnothere.so.9" {
		k, err := ChooseCPUKernels("auto")
		if err != nil || k.Kernels != KernelsOpenBLAS || !strings.Contains(k.Reason, "libnothere.so.9") {
			t.Fatalf("auto without the library: %+v, %v", k, err)
		}
		if _, err := ChooseCPUKernels("onednn"); err == nil || !strings.Contains(err.Error(), "libnothere.so.9") {
			t.Fatalf("onednn without the library: %v", err)
		}
		net, err := NewNet(tinyParams(t, 1), NetOptions{Batch: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer net.Close()
		if _, err := net.Logits(make([]float32, 3*67*67), 1); err != nil {
			t.Fatal(err)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMissingOneDNNLibraryFallsBack$", "-test.v")
	cmd.Env = append(os.Environ(), "ALEXRING_DNNL_LIBRARY=libnothere.so.9")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("the child: %v\n%s", err, out)
	}
}
