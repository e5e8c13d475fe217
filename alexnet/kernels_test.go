package alexnet

import (
	"fmt"
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
	tiny, _ := NewSpec("tiny", 5)
	seed, _ := NewSpec("seed", 5)
	if _, err := ChooseCPUKernels("fft", tiny); err == nil || !strings.Contains(err.Error(), `--cpu-kernels "fft": want auto, onednn, openblas`) {
		t.Errorf("an unknown name: %v", err)
	}
	if _, err := SetCPUKernels("fft"); err == nil {
		t.Error("SetCPUKernels took an unknown name")
	}
	for _, s := range []Spec{tiny, seed} { // an explicit choice holds for every network
		k, err := ChooseCPUKernels("openblas", s)
		if err != nil || k.Kernels != KernelsOpenBLAS || !strings.Contains(k.String(), "im2col + "+BLAS) {
			t.Errorf("openblas, %s: %v, %v", s.Variant, k, err)
		}
		k, err = ChooseCPUKernels("onednn", s)
		if onednn.Available {
			if err != nil || k.Kernels != KernelsOneDNN || k.OneDNN.Threads < 1 || k.ISA != k.OneDNN.ISA {
				t.Errorf("onednn, %s: %+v, %v", s.Variant, k, err)
			}
		} else if err == nil || !strings.Contains(err.Error(), "no oneDNN") {
			t.Errorf("onednn in a build without it: %v", err)
		}
	}
	for _, s := range []Spec{tiny, seed} {
		k, err := ChooseCPUKernels("auto", s)
		if err != nil || k.Reason == "" || k.ISA == "" {
			t.Fatalf("auto, %s: %+v, %v", s.Variant, k, err)
		}
		t.Logf("auto, %s: %v", s.Variant, k)
		want := KernelsOpenBLAS
		if onednn.Available && jitISA(k.ISA) && s.ConvMACs() >= AutoOneDNNMACs {
			want = KernelsOneDNN
		}
		if k.Kernels != want {
			t.Errorf("auto chose %s for %s on ISA %s (oneDNN in the build: %v), want %s", k.Kernels, s.Variant, k.ISA, onednn.Available, want)
		}
		if !strings.Contains(k.String(), "ISA "+k.ISA) || !strings.Contains(k.String(), "auto: ") {
			t.Errorf("auto's description %q names neither the ISA nor the reason", k)
		}
		if again, _ := ChooseCPUKernels("auto", s); again != k {
			t.Errorf("auto chose %v, then %v", k, again)
		}
	}
}

// auto's rule, by the network and the machine: the demo's tiny model on
// im2col + BLAS, the ImageNet-sized ones on oneDNN where its JIT runs AVX2
// or AVX-512, every one on im2col + BLAS without a usable oneDNN.
func TestAutoKernelsRule(t *testing.T) {
	spec := func(v string) Spec {
		s, err := NewSpec(v, 5)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cases := []struct {
		variant, noDNN, isa string
		want                CPUKernels
	}{
		{"tiny", "", "avx512_core_amx", KernelsOpenBLAS},
		{"tiny", "", "avx2", KernelsOpenBLAS},
		{"seed", "", "avx512_core_amx", KernelsOneDNN},
		{"seed", "", "avx512_core", KernelsOneDNN},
		{"seed", "", "avx2", KernelsOneDNN},
		{"full", "", "avx512_core_amx", KernelsOneDNN},
		{"full", "", "avx2_vnni", KernelsOneDNN},
		{"torchvision", "", "avx512_core_amx", KernelsOneDNN},
		{"torchvision", "", "avx2", KernelsOneDNN},
		{"seed", "", "sse41", KernelsOpenBLAS},
		{"full", "", "avx", KernelsOpenBLAS},
		{"seed", "this build has no oneDNN", "avx512f", KernelsOpenBLAS},
		{"torchvision", "load libdnnl.so.3: no such file", "avx512f", KernelsOpenBLAS},
		{"tiny", "this build has no oneDNN", "avx2", KernelsOpenBLAS},
	}
	for _, c := range cases {
		s := spec(c.variant)
		got, why := autoKernels(c.noDNN, c.isa, s)
		if got != c.want {
			t.Errorf("%s on %s (oneDNN unusable: %q): %s (%s), want %s", c.variant, c.isa, c.noDNN, got, why, c.want)
		}
		if c.noDNN != "" && why != c.noDNN || c.noDNN == "" && !strings.Contains(why, c.isa) && !strings.Contains(why, s.Variant) {
			t.Errorf("%s on %s: the reason %q says neither why nor what", c.variant, c.isa, why)
		}
	}
	// The measure: the convolutions' forward multiply-adds per image, which
	// grow with the widths and the input.
	tiny, seed := spec("tiny"), spec("seed")
	if m := tiny.ConvMACs(); m != 8*16*16*3*11*11+16*7*7*8*5*5+24*3*3*16*3*3+24*3*3*24*3*3+16*3*3*24*3*3 {
		t.Errorf("tiny's convolutions: %d multiply-adds", m)
	}
	if seed.ConvMACs() <= spec("tiny").ConvMACs() || spec("full").ConvMACs() <= seed.ConvMACs() {
		t.Errorf("ConvMACs: tiny %d, seed %d, full %d", tiny.ConvMACs(), seed.ConvMACs(), spec("full").ConvMACs())
	}
}

// auto's request resolves per network: each graph convolves with its own
// model's choice, and the process's request stays auto.
func TestAutoResolvesPerNetwork(t *testing.T) {
	useKernels(t, KernelsAuto)
	if k := CurrentCPUKernels(); k.Kernels != KernelsAuto || k.Reason == "" {
		t.Errorf("the request: %+v", k)
	}
	tiny := tinyParams(t, 1)
	want := CPUKernelsFor(tiny.Spec)
	if want.Kernels != KernelsOneDNN && want.Kernels != KernelsOpenBLAS {
		t.Fatalf("tiny under auto: %v", want)
	}
	seed, _ := NewSpec("seed", 5)
	if k := CPUKernelsFor(seed); (k.Kernels == KernelsOneDNN) != (onednn.Available && CurrentCPUKernels().noDNN == "" && jitISA(k.ISA)) {
		t.Errorf("seed under auto: %v", k)
	}
	net, err := NewNet(tiny, NetOptions{Batch: 2, Train: true})
	if err != nil {
		t.Fatal(err)
	}
	defer net.Close()
	for _, n := range net.g.AllNodes() {
		if op, ok := n.Op().(convOp); ok && (op.dnn != nil) != (want.Kernels == KernelsOneDNN) {
			t.Errorf("tiny under auto (%v): op %v", want, op)
		}
	}
	if f, g := CPUFootprint(tiny.Spec, 2, 0), cpuFootprint(tiny.Spec, 2, 0, want.Kernels); f != g {
		t.Errorf("the footprint under auto counts other kernels: %v, want %v", f, g)
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
		seed, _ := NewSpec("seed", 5) // a model auto runs on oneDNN where it loads
		k, err := ChooseCPUKernels("auto", seed)
		if err != nil || k.Kernels != KernelsOpenBLAS || !strings.Contains(k.Reason, "libnothere.so.9") {
			t.Fatalf("auto without the library: %+v, %v", k, err)
		}
		if _, err := ChooseCPUKernels("onednn", seed); err == nil || !strings.Contains(err.Error(), "libnothere.so.9") {
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

// crossoverSpecs run from the tiny model to the seed's, for
// BenchmarkKernelsCrossover: each names its convolution work per image.
var crossoverSpecs = []Spec{
	{Variant: "tiny", Widths: [5]int{8, 16, 24, 24, 16}, Hidden: 64, Input: 67},
	{Variant: "tiny-x2", Widths: [5]int{16, 32, 48, 48, 32}, Hidden: 64, Input: 67},
	{Variant: "tiny-x4", Widths: [5]int{32, 64, 96, 96, 64}, Hidden: 64, Input: 67},
	{Variant: "seed-67", Widths: [5]int{48, 128, 192, 192, 128}, Hidden: 64, Input: 67},
	{Variant: "tiny-127", Widths: [5]int{8, 16, 24, 24, 16}, Hidden: 64, Input: 127},
	{Variant: "half-127", Widths: [5]int{24, 64, 96, 96, 64}, Hidden: 256, Input: 127},
	{Variant: "tiny-224", Widths: [5]int{8, 16, 24, 24, 16}, Hidden: 64, Input: 224},
	{Variant: "half-224", Widths: [5]int{24, 64, 96, 96, 64}, Hidden: 256, Input: 224},
	{Variant: "seed", Widths: [5]int{48, 128, 192, 192, 128}, Hidden: 2048, Input: 224},
}

// BenchmarkKernelsCrossover times a training step (batch 32, as the demo
// and the seed train) of each crossoverSpecs model on each kernel path, to
// place auto's threshold (ConvMACs): run each GOMAXPROCS in its own
// process, as oneDNN keeps the thread count it started with:
//
//	GOMAXPROCS=2 go test ./alexnet -run '^$' -bench KernelsCrossover -benchtime 8x
func BenchmarkKernelsCrossover(b *testing.B) {
	const batch = 32
	for _, s := range crossoverSpecs {
		s.Classes = 5
		if err := s.Validate(); err != nil {
			b.Fatal(err)
		}
		for _, k := range buildKernels() {
			b.Run(fmt.Sprintf("%s/%.1fMMAC/%s", s.Variant, float64(s.ConvMACs())/1e6, k), func(b *testing.B) {
				useKernels(b, k)
				p := NewParams(s)
				p.Init(0)
				net, err := NewNet(p, NetOptions{Batch: batch, Train: true, Dropout: 0.5})
				if err != nil {
					b.Fatal(err)
				}
				defer net.Close()
				rng := rand.New(rand.NewPCG(1, 2))
				x := make([]float32, batch*3*s.Input*s.Input)
				for i := range x {
					x[i] = float32(rng.NormFloat64())
				}
				labels := make([]int, batch)
				grad := make([]float32, len(p.Flat))
				net.BindGrad(grad)
				if _, err := net.Gradient(x, labels, batch, rng, grad); err != nil { // warm up
					b.Fatal(err)
				}
				b.ResetTimer()
				for range b.N {
					if _, err := net.Gradient(x, labels, batch, rng, grad); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(batch*b.N)/b.Elapsed().Seconds(), "img/s")
			})
		}
	}
}
