package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/inference"
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
		var p inference.Prediction
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
	code, stdout, errOut := runPredict(append([]string{"--model", model, "--plot", out}, images...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	// Where the plot went is said on stderr, so stdout stays predict.py's
	// lines (or, with --json, JSON only).
	if errOut != "predict: plot of 2 images written to "+out+"\n" || strings.Contains(stdout, out) {
		t.Errorf("stderr %q, stdout %q: want one line on stderr naming %s", errOut, stdout, out)
	}
	one := filepath.Join(dir, "one.png")
	code, stdout, errOut = runPredict("--model", model, "--json", "--plot", one, images[0])
	if code != 0 || errOut != "predict: plot of 1 image written to "+one+"\n" || strings.Count(stdout, "\n") != 1 || !strings.HasPrefix(stdout, "{") {
		t.Errorf("--json --plot: exit %d, stderr %q, stdout %q", code, errOut, stdout)
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

// pngClaiming is a valid 1x1 PNG whose header says w x h: a decompression bomb.
func pngClaiming(t *testing.T, w, h uint32) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, image.NewGray(image.Rect(0, 0, 1, 1))); err != nil {
		t.Fatal(err)
	}
	data := b.Bytes()
	binary.BigEndian.PutUint32(data[16:], w)
	binary.BigEndian.PutUint32(data[20:], h)
	binary.BigEndian.PutUint32(data[29:], crc32.ChecksumIEEE(data[12:29])) // IHDR's type and data
	return data
}

// Files that are not images, or claim to be huge, are each an error naming
// them; the images after them are still predicted.
func TestPredictBombsAndOddFiles(t *testing.T) {
	dir, model, images := setup(t)
	bomb := filepath.Join(dir, "bomb.png")
	os.WriteFile(bomb, pngClaiming(t, 100000, 100000), 0o644)
	folder := filepath.Join(dir, "folder.jpg")
	os.Mkdir(folder, 0o755)
	zero := filepath.Join(dir, "zero.png")
	os.WriteFile(zero, nil, 0o644)
	fifo := filepath.Join(dir, "fifo.jpg")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	var g bytes.Buffer
	frames := &gif.GIF{}
	for range 50 {
		frames.Image = append(frames.Image, image.NewPaletted(image.Rect(0, 0, 8, 8), color.Palette{color.Black, color.White}))
		frames.Delay = append(frames.Delay, 1)
	}
	gif.EncodeAll(&g, frames)
	animated := filepath.Join(dir, "animated.png")
	os.WriteFile(animated, g.Bytes(), 0o644)

	code, out, errOut := runPredict("--model", model, "--json", images[0], bomb, folder, zero, fifo, animated, images[1])
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	for path, why := range map[string]string{bomb: "100000x100000", folder: "not a regular file", zero: "empty file", fifo: "not a regular file", animated: "unknown format"} {
		if !strings.Contains(errOut, path+": ") || !strings.Contains(errOut, why) {
			t.Errorf("stderr does not say %s: %s:\n%s", path, why, errOut)
		}
	}
	if n := strings.Count(out, "\n"); n != 2 || !strings.Contains(out, images[0]) || !strings.Contains(out, images[1]) {
		t.Errorf("%d predictions, want the 2 good images:\n%s", n, out)
	}
}

// A model whose logits are not finite predicts nothing: an error for each
// image naming it and the model, exit 1, and no NaN printed as a result.
func TestPredictNonFiniteLogits(t *testing.T) {
	dir, _, images := setup(t)
	spec, _ := alexnet.NewSpec("tiny", 5)
	for name, poison := range map[string]func(p *alexnet.Params){
		"nan weight": func(p *alexnet.Params) { w, _ := p.View("classifier.6.weight"); w[7] = float32(math.NaN()) },
		"inf bias":   func(p *alexnet.Params) { b, _ := p.View("classifier.6.bias"); b[2] = float32(math.Inf(1)) },
	} {
		p := alexnet.NewParams(spec)
		p.Init(1)
		poison(p)
		model := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".safetensors")
		if err := alexnet.SaveModel(model, p, alexnet.ModelMeta{Classes: sharding.SynthClasses}); err != nil {
			t.Fatal(err)
		}
		for _, mode := range [][]string{nil, {"--json"}} {
			args := append(append([]string{"--model", model}, mode...), images...)
			code, out, errOut := runPredict(args...)
			if code != 1 || out != "" {
				t.Errorf("%s %v: exit %d, stdout %q; want 1 and nothing", name, mode, code, out)
			}
			for _, img := range images {
				if !strings.Contains(errOut, img+": the model "+model+" gives a non-finite logit") {
					t.Errorf("%s %v: stderr does not name %s and the model:\n%s", name, mode, img, errOut)
				}
			}
		}
	}
}
