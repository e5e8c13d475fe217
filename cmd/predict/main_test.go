package main

import (
	"bytes"
	"encoding/json"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/sharding"
)

func setup(t *testing.T) (dir, model string, images []string) {
	t.Helper()
	dir = t.TempDir()
	if err := sharding.Synthesize(filepath.Join(dir, "data"), sharding.SynthConfig{Train: 1, Val: 1, Size: 32, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	spec, _ := alexnet.NewSpec("tiny", 5)
	p := alexnet.NewParams(spec)
	p.Init(1)
	// Bias the last layer so the prediction is not a coin toss.
	b, _ := p.View("classifier.6.bias")
	b[3] = 2
	model = filepath.Join(dir, "best.safetensors")
	if err := alexnet.SaveModel(model, p, alexnet.ModelMeta{Classes: sharding.SynthClasses}); err != nil {
		t.Fatal(err)
	}
	images = []string{filepath.Join(dir, "data", "val", "circle", "circle_0000.png"), filepath.Join(dir, "data", "val", "ring", "ring_0000.png")}
	return dir, model, images
}

func runPredict(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestPredictSeedFormat(t *testing.T) {
	_, model, images := setup(t)
	// No class_indices.json in the working folder: the model's names are used.
	code, out, errOut := runPredict("--model", model, images[0])
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "predicted: square prob: ") || !strings.HasPrefix(lines[1], "class: circle     prob: ") {
		t.Errorf("output:\n%s", out)
	}
}

func TestPredictJSONAndBadImage(t *testing.T) {
	dir, model, images := setup(t)
	idx := filepath.Join(dir, "ci.json")
	sharding.WriteClassIndices(idx, []string{"a", "b", "c", "d", "e"})
	missing := filepath.Join(dir, "missing.jpg")
	garbage := filepath.Join(dir, "garbage.jpg")
	os.WriteFile(garbage, []byte("not a jpeg"), 0o644)
	code, out, errOut := runPredict("--model", model, "--class-indices", idx, "--json", images[0], missing, garbage, images[1])
	if code != 1 {
		t.Errorf("exit %d with unreadable images, want 1", code)
	}
	if !strings.Contains(errOut, missing) || !strings.Contains(errOut, garbage) {
		t.Errorf("stderr does not name the bad images: %s", errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d JSON lines, want 2 (the good images):\n%s", len(lines), out)
	}
	for i, line := range lines {
		var p Prediction
		if err := json.Unmarshal([]byte(line), &p); err != nil {
			t.Fatal(err)
		}
		sum := 0.0
		for _, v := range p.Probs {
			sum += v
		}
		if p.Image != images[i] || p.Class != "d" || p.Index != 3 || math.Abs(sum-1) > 1e-9 || p.Probs["d"] != p.Prob {
			t.Errorf("prediction %+v", p)
		}
	}
}

func TestPredictClassCountMismatch(t *testing.T) {
	dir, model, images := setup(t)
	idx := filepath.Join(dir, "three.json")
	sharding.WriteClassIndices(idx, []string{"a", "b", "c"})
	code, _, errOut := runPredict("--model", model, "--class-indices", idx, images[0])
	if code != 2 || !strings.Contains(errOut, "names 3 classes but the model has 5") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	code, _, errOut = runPredict("--model", model, "--class-indices", filepath.Join(dir, "nope.json"), images[0])
	if code != 2 || !strings.Contains(errOut, "nope.json") {
		t.Errorf("missing explicit class index: exit %d: %s", code, errOut)
	}
	code, _, errOut = runPredict("--model", filepath.Join(dir, "nomodel.safetensors"), images[0])
	if code != 2 || !strings.Contains(errOut, "nomodel.safetensors") {
		t.Errorf("missing model: exit %d: %s", code, errOut)
	}
}

func TestPredictPlot(t *testing.T) {
	dir, model, images := setup(t)
	out := filepath.Join(dir, "plot.png")
	if code, _, errOut := runPredict(append([]string{"--model", model, "--plot", out}, images...)...); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() < 500 || b.Dy() < 2*256 {
		t.Errorf("plot is %v, want two rows of picture and bars", b)
	}
}
