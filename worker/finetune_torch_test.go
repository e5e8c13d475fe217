package worker

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/alexring/alexring/alexnet"
)

// torchvisionStateDict is a Python program that writes torchvision's alexnet
// (1000 classes, its own initialisation under a fixed seed) as PyTorch saves
// it, torch.save(state_dict) (sys.argv[1]), and the same tensors as a
// safetensors file written by hand (sys.argv[2]): JSON header, raw float32.
// Without torchvision it builds the same module by hand.
const torchvisionStateDict = `
import json, struct, sys
import torch
import torch.nn as nn
torch.manual_seed(0)
try:
    import torchvision
    model = torchvision.models.alexnet(num_classes=1000)
except ImportError:
    model = nn.Module()
    model.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(3, 2))
    model.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    model.classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(True),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(True), nn.Linear(4096, 1000))
sd = model.state_dict()
torch.save(sd, sys.argv[1])
header, blobs, offset = {}, [], 0
for name, t in sd.items():
    b = t.detach().contiguous().float().numpy().tobytes()
    header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
    blobs.append(b)
    offset += len(b)
h = json.dumps(header).encode()
with open(sys.argv[2], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for b in blobs:
        f.write(b)
`

// The recipe of the README: torchvision's ImageNet AlexNet, as a user
// downloads it (a torch.save'd state_dict of 1000 classes), fine-tuned on 5
// classes with the features frozen. Every tensor but the last layer's comes
// from the file, bit for bit; the last layer is the seed's draw, and the log
// lists it; the features stay the file's through training. The .pth and a
// safetensors copy give the same model.
func TestFineTuneTorchvisionStateDict(t *testing.T) {
	if testing.Short() {
		t.Skip("writes and loads two 244 MB state_dicts")
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import torch").Run(); err != nil {
		t.Skipf("no torch for /usr/bin/python3 (%v): cannot write a PyTorch state_dict", err)
	}
	dir := t.TempDir()
	pth, st := filepath.Join(dir, "alexnet-owt.pth"), filepath.Join(dir, "alexnet-owt.safetensors")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "/usr/bin/python3", "-c", torchvisionStateDict, pth, st).CombinedOutput(); err != nil {
		t.Fatalf("writing torchvision's state_dict: %v\n%s", err, out)
	}
	file, err := alexnet.ReadSafetensors(st) // the reference: torch's own bytes, through the plain format
	if err != nil {
		t.Fatal(err)
	}

	data := synthData(t, 4) // 5 classes
	var first []float32
	for _, path := range []string{pth, st} {
		cfg := tinyConfig(data, t.TempDir())
		cfg.Variant, cfg.Init, cfg.Freeze, cfg.Epochs = "torchvision", path, "features", 1
		cfg.Batch, cfg.EvalBatch, cfg.Dropout = 10, 5, 0.5
		core, logs := observer.New(zapcore.InfoLevel)
		tr, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), Controller{}, zap.New(core))
		if err != nil {
			t.Fatal(err)
		}
		p := tr.Params()
		fresh := alexnet.NewParams(p.Spec)
		fresh.Init(cfg.Seed)
		for _, tn := range p.Layout {
			got := p.Flat[tn.Offset : tn.Offset+tn.Size]
			var want []float32
			if strings.HasPrefix(tn.Name, "classifier.6.") {
				want, _ = fresh.View(tn.Name)
			} else if want, err = file.Tensors[tn.Name].Float32s(); err != nil {
				t.Fatalf("%s: %v", tn.Name, err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("--init %s: %s is not %s", filepath.Base(path), tn.Name, map[bool]string{true: "the seed's draw", false: "the file's"}[strings.HasPrefix(tn.Name, "classifier.6.")])
			}
		}
		entries := logs.FilterMessage("initialised from --init").All()
		if len(entries) != 1 {
			t.Fatalf("--init %s: %d \"initialised from --init\" lines", filepath.Base(path), len(entries))
		}
		reinit := fmt.Sprint(entries[0].ContextMap()["reinitialised"])
		if !strings.Contains(reinit, "classifier.6.weight: [1000 4096] in the file, [5 4096] here") || !strings.Contains(reinit, "classifier.6.bias: [1000] in the file, [5] here") {
			t.Errorf("--init %s: re-initialised %s, want classifier.6's weight and bias", filepath.Base(path), reinit)
		}
		if first == nil {
			first = slices.Clone(p.Flat)
			// Train the .pth's: the frozen features stay the file's bits.
			if err := tr.Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			from := p.Spec.ClassifierOffset()
			if !slices.Equal(p.Flat[:from], first[:from]) {
				t.Error("a frozen feature changed in training")
			}
			if slices.Equal(p.Flat[from:], first[from:]) {
				t.Error("the classifier did not train")
			}
		} else if !slices.Equal(p.Flat, first) {
			t.Error("the .pth and the safetensors copy initialise different models")
		}
		tr.Close()
	}
}
