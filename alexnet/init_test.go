package alexnet

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The torchvision variant is torchvision.models.alexnet's layout: its shapes
// and its 61,100,840 parameters at 1000 classes, and features of 6x6 at the
// 224 input, where its AdaptiveAvgPool2d((6, 6)) changes nothing.
func TestTorchvisionVariant(t *testing.T) {
	spec, err := NewSpec("torchvision", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Input != 224 || spec.FeatureSide() != 6 || spec.Flat() != 256*6*6 {
		t.Errorf("input %d, feature side %d, flat %d; want 224, 6 and 9216", spec.Input, spec.FeatureSide(), spec.Flat())
	}
	want := map[string][]int{
		"features.0.weight": {64, 3, 11, 11}, "features.3.weight": {192, 64, 5, 5}, "features.6.weight": {384, 192, 3, 3},
		"features.8.weight": {256, 384, 3, 3}, "features.10.weight": {256, 256, 3, 3},
		"classifier.1.weight": {4096, 9216}, "classifier.4.weight": {4096, 4096}, "classifier.6.weight": {1000, 4096},
		"classifier.6.bias": {1000},
	}
	for _, tn := range spec.Layout() {
		if w, ok := want[tn.Name]; ok && !slices.Equal(tn.Shape, w) {
			t.Errorf("%s has shape %v, want %v", tn.Name, tn.Shape, w)
		}
	}
	if n := spec.NumParams(); n != 61100840 {
		t.Errorf("%d parameters, want torchvision's 61,100,840", n)
	}
}

// writeStateDict writes p's tensors, plus extra, as a safetensors state_dict.
func writeStateDict(t *testing.T, p *Params, extra map[string]STTensor) string {
	t.Helper()
	names, tensors := paramTensors(p)
	for n, v := range extra {
		names = append(names, n)
		tensors[n] = v
	}
	path := filepath.Join(t.TempDir(), "init.safetensors")
	if err := WriteSafetensors(path, names, tensors, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

// A state_dict for another number of classes initialises every tensor of the
// same name and shape from the file and draws the last layer as Init(seed)
// does; the file's extra tensors are listed, not used.
func TestInitFromTakesTensorsByNameAndShape(t *testing.T) {
	other, err := NewSpec("tiny", 10)
	if err != nil {
		t.Fatal(err)
	}
	src := NewParams(other)
	src.Init(77)
	path := writeStateDict(t, src, map[string]STTensor{"num_batches_tracked": F32Tensor([]float32{1}, 1)})

	p := tinyParams(t, 1) // 5 classes
	rep, err := p.InitFrom(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	fresh := tinyParams(t, 3)
	if got, want := rep.ReinitNames(), []string{"classifier.6.weight", "classifier.6.bias"}; !slices.Equal(got, want) {
		t.Errorf("re-initialised %v, want %v", got, want)
	}
	if !strings.Contains(rep.Reinit[0], "[10 64] in the file, [5 64] here") {
		t.Errorf("the reason %q does not give both shapes", rep.Reinit[0])
	}
	if !slices.Equal(rep.Ignored, []string{"num_batches_tracked"}) {
		t.Errorf("ignored %v, want [num_batches_tracked]", rep.Ignored)
	}
	if len(rep.Loaded) != len(p.Layout)-2 {
		t.Errorf("loaded %v", rep.Loaded)
	}
	for _, tn := range p.Layout {
		got := p.Flat[tn.Offset : tn.Offset+tn.Size]
		want, _ := fresh.View(tn.Name)
		if !strings.HasPrefix(tn.Name, "classifier.6.") {
			want, _ = src.View(tn.Name)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s differs from what it should be (the file's, or the seed's draw for the last layer)", tn.Name)
		}
	}
	// The draws are the seed's: another rank with the same seed gets the same bits.
	q := tinyParams(t, 99)
	if _, err := q.InitFrom(path, 3); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(q.Flat, p.Flat) {
		t.Error("two InitFrom with the same seed differ")
	}
}

func TestInitFromRefusesUselessFiles(t *testing.T) {
	p := tinyParams(t, 1)
	full, err := NewSpec("seed", 5)
	if err != nil {
		t.Fatal(err)
	}
	// Names that exist, none of the same shape: another variant's file.
	other := NewParams(Spec{Variant: "x", Widths: [5]int{4, 4, 4, 4, 4}, Hidden: 8, Input: full.Input, Classes: 3})
	if _, err := p.InitFrom(writeStateDict(t, other, nil), 1); err == nil || !strings.Contains(err.Error(), "none of the tiny model's") {
		t.Errorf("a file of another variant: %v", err)
	}
	// A tensor of the right shape in another type.
	names, tensors := paramTensors(tinyParams(t, 2))
	st := tensors[names[0]]
	st.DType, st.Data = "F64", append(st.Data, st.Data...)
	tensors[names[0]] = st
	path := filepath.Join(t.TempDir(), "f64.safetensors")
	if err := WriteSafetensors(path, names, tensors, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := p.InitFrom(path, 1); err == nil || !strings.Contains(err.Error(), "features.0.weight is F64") {
		t.Errorf("an F64 tensor: %v", err)
	}
	if _, err := p.InitFrom(filepath.Join(t.TempDir(), "missing.pth"), 1); err == nil {
		t.Error("a missing file was accepted")
	}
}

func TestParseFreeze(t *testing.T) {
	for in, want := range map[string]Freeze{"": FreezeNone, "none": FreezeNone, "features": FreezeFeatures} {
		if got, err := ParseFreeze(in); err != nil || got != want {
			t.Errorf("ParseFreeze(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseFreeze("classifier"); err == nil || !strings.Contains(err.Error(), "want none or features") {
		t.Errorf("ParseFreeze(classifier): %v", err)
	}
	spec := tinyParams(t, 1).Spec
	if from, _ := spec.TrainFrom(FreezeFeatures); from != spec.ClassifierOffset() {
		t.Errorf("TrainFrom(features) = %d, want the classifier's offset %d", from, spec.ClassifierOffset())
	}
}

// With the features frozen the graph has no backward op for a convolution
// nor for the classifier's input, and the classifier's gradient is the full
// graph's (same masks): bit for bit with im2col; with oneDNN, whose frozen
// convolutions run its inference primitives, to float32 rounding.
func TestFrozenFeaturesHaveNoGradient(t *testing.T) {
	for _, k := range buildKernels() {
		t.Run(string(k), func(t *testing.T) {
			useKernels(t, k)
			frozenFeaturesHaveNoGradient(t, k == KernelsOpenBLAS)
		})
	}
}

func frozenFeaturesHaveNoGradient(t *testing.T, exact bool) {
	p := tinyParams(t, 5)
	from := p.Spec.ClassifierOffset()
	const batch = 3
	full, err := NewNet(p, NetOptions{Batch: batch, Train: true, Dropout: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	frozen, err := NewNet(p, NetOptions{Batch: batch, Train: true, Dropout: 0.5, TrainFrom: from})
	if err != nil {
		t.Fatal(err)
	}
	defer frozen.Close()
	countBackward := func(n *Net) (conv, linearInput int) {
		for _, node := range n.g.AllNodes() {
			switch op := node.Op().(type) {
			case convOp:
				if op.kind != convForward {
					conv++
				}
			case linearOp:
				if op.kind == linearGradInput {
					linearInput++
				}
			}
		}
		return conv, linearInput
	}
	if conv, lin := countBackward(frozen); conv != 0 || lin != 2 {
		t.Errorf("frozen graph: %d convolution backward ops (want 0), %d linear input gradients (want 2: not the classifier's input)", conv, lin)
	}
	if conv, lin := countBackward(full); conv == 0 || lin != 3 {
		t.Errorf("full graph: %d convolution backward ops, %d linear input gradients (want 3)", conv, lin)
	}

	x, labels := tinyBatch(p, batch)
	want := make([]float32, len(p.Flat))
	lossFull, err := full.Gradient(x, labels, batch, rand.New(rand.NewPCG(1, 1)), want)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, len(p.Flat)-from)
	if _, err := frozen.Gradient(x, labels, batch, rand.New(rand.NewPCG(1, 1)), make([]float32, len(p.Flat))); err == nil {
		t.Error("the frozen net took a gradient vector of every parameter")
	}
	lossFrozen, err := frozen.Gradient(x, labels, batch, rand.New(rand.NewPCG(1, 1)), got)
	if err != nil {
		t.Fatal(err)
	}
	if exact {
		if lossFrozen != lossFull || !slices.Equal(got, want[from:]) {
			t.Errorf("frozen: loss %v and the classifier's gradient differ from the full graph's (loss %v)", lossFrozen, lossFull)
		}
	} else if d, scale := maxAbsDiff(got, want[from:]); d > 1e-5*scale || math.Abs(float64(lossFrozen-lossFull)) > 1e-6 {
		t.Errorf("frozen: loss %v (full %v), the classifier's gradient %g off (of %g)", lossFrozen, lossFull, d, scale)
	}
	if _, err := NewNet(p, NetOptions{Batch: 1, Train: true, TrainFrom: from + 1}); err == nil {
		t.Error("a TrainFrom inside a tensor was accepted")
	}
}

// A backend with the features frozen trains the classifier and leaves the
// features, and their Adam moments, exactly as they were.
func TestFrozenFeaturesStayBitIdentical(t *testing.T) {
	p := tinyParams(t, 9)
	start := slices.Clone(p.Flat)
	adam, err := NewAdam(DefaultAdam(), len(p.Flat))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCPU(BackendConfig{Params: p, Adam: adam, Batch: 4, Dropout: 0.5, Freeze: FreezeFeatures})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	from := p.Spec.ClassifierOffset()
	x, labels := tinyBatch(p, 4)
	rng := rand.New(rand.NewPCG(2, 2))
	grad, _ := c.HostVector(len(p.Flat) - from)
	for step := range 3 {
		g := grad
		if step == 1 {
			g = nil // kept in the backend
		}
		if _, err := c.Gradient(x, labels, 4, rng, g, Hooks{}); err != nil {
			t.Fatal(err)
		}
		if err := c.Update(g); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(p.Flat[:from], start[:from]) {
		t.Error("a frozen feature parameter changed")
	}
	if slices.Equal(p.Flat[from:], start[from:]) {
		t.Error("the classifier did not train")
	}
	for i := range from {
		if adam.M[i] != 0 || adam.V[i] != 0 {
			t.Fatalf("Adam's moments of frozen parameter %d are %g, %g; want 0", i, adam.M[i], adam.V[i])
		}
	}
	if adam.Step != 3 {
		t.Errorf("Adam step %d, want 3", adam.Step)
	}
	if _, err := NewCPU(BackendConfig{Params: p, Adam: adam, Batch: 4, Freeze: "convs"}); err == nil {
		t.Error("an unknown freeze was accepted")
	}
}

// BenchmarkStepFrozen is BenchmarkStep with the features frozen (bench step
// --freeze features in cmd/bench is the figure to quote).
func BenchmarkStepFrozen(b *testing.B) {
	spec, _ := NewSpec("seed", 5)
	benchmarkStep(b, spec.ClassifierOffset())
}
