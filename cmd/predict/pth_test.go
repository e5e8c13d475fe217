package main

import (
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet"
)

// The seed's own predict.py, unchanged, loads the best.pth that training
// writes (torch.load + load_state_dict) and prints the probabilities that
// predict prints for the same file and image.
func TestPredictPthAgainstReference(t *testing.T) {
	reference, _ := filepath.Abs("../../../shared/reference/pytorch/predict.py")
	if _, err := os.Stat(reference); err != nil {
		t.Skipf("no reference predict.py: %v", err)
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import torch, torchvision, PIL").CombinedOutput(); err != nil {
		t.Skipf("/usr/bin/python3 lacks torch, torchvision or PIL (Debian's python3-torch, python3-torchvision, python3-pil): %v\n%s", err, out)
	}
	dir := t.TempDir()
	// predict.py builds AlexNet(num_classes=len(class_indices)): the seed
	// variant. An initialised model gives near-uniform probabilities; the last
	// layer is scaled up so that they differ in the printed digits.
	spec, _ := alexnet.NewSpec("seed", 5)
	p := alexnet.NewParams(spec)
	p.Init(7)
	w, _ := p.View("classifier.6.weight")
	for i := range w {
		w[i] *= 40
	}
	model := filepath.Join(dir, "best.pth")
	if err := alexnet.SavePthModel(model, p); err != nil {
		t.Fatal(err)
	}
	classes := map[string]string{"0": "daisy", "1": "dandelion", "2": "roses", "3": "sunflowers", "4": "tulips"}
	js, _ := json.Marshal(classes)
	indices := filepath.Join(dir, "class_indices.json")
	if err := os.WriteFile(indices, js, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "image.png")
	writeTestImage(t, img, 317, 243)

	env := os.Environ()
	env = append(env, "MPLBACKEND=Agg")
	if exec.Command("/usr/bin/python3", "-c", "import matplotlib").Run() != nil {
		// predict.py only shows the image with matplotlib, after printing:
		// a stand-in whose calls do nothing lets it run without it.
		stub := filepath.Join(dir, "stub", "matplotlib")
		os.MkdirAll(stub, 0o755)
		os.WriteFile(filepath.Join(stub, "__init__.py"), nil, 0o644)
		os.WriteFile(filepath.Join(stub, "pyplot.py"), []byte("def imshow(*a, **k): pass\ndef title(*a, **k): pass\ndef show(*a, **k): pass\n"), 0o644)
		env = append(env, "PYTHONPATH="+filepath.Join(dir, "stub"))
	}
	cmd := exec.Command("/usr/bin/python3", reference, img, "--model_path", model, "--class_indices", indices)
	cmd.Env = env
	cmd.Dir = dir
	ref, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("predict.py: %v\n%s", err, msg)
	}
	code, out, errOut := runPredict("--model", model, "--class-indices", indices, img)
	if code != 0 {
		t.Fatalf("predict: exit %d: %s", code, errOut)
	}
	t.Logf("predict.py:\n%s\npredict:\n%s", ref, out)
	refLines := strings.Split(strings.TrimSpace(string(ref)), "\n")
	ourLines := strings.Split(strings.TrimSpace(out), "\n")
	if len(refLines) != 6 || len(ourLines) != 6 {
		t.Fatalf("predict.py printed %d lines, predict %d; want 6 each", len(refLines), len(ourLines))
	}
	spread := false
	for i := range refLines {
		rc, rp := splitProb(t, refLines[i])
		oc, op := splitProb(t, ourLines[i])
		// Printed to 3 significant digits: a value near a rounding edge may
		// print one unit apart.
		if rc != oc || op-rp > 0.0015 || rp-op > 0.0015 {
			t.Errorf("line %d: predict.py %q, predict %q", i+1, refLines[i], ourLines[i])
		}
		if i > 0 && (rp < 0.15 || rp > 0.25) {
			spread = true
		}
	}
	if !spread {
		t.Errorf("the probabilities are all near 1/5, so the comparison says little:\n%s", ref)
	}
}

// splitProb splits "predicted: X prob: P" or "class: X prob: P".
func splitProb(t *testing.T, line string) (string, float64) {
	t.Helper()
	head, prob, ok := strings.Cut(line, " prob: ")
	v, err := strconv.ParseFloat(prob, 64)
	if !ok || err != nil {
		t.Fatalf("line %q has no probability", line)
	}
	return strings.Join(strings.Fields(head), " "), v
}

// writeTestImage writes a PNG with gradients and edges, so that the resize
// and the convolutions see structure.
func writeTestImage(t *testing.T, path string, w, h int) {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := color.RGBA{uint8(x * 255 / w), uint8(y * 255 / h), uint8((x*y)%256/2 + 64*((x/20+y/20)%2)), 255}
			img.Set(x, y, c)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
}
