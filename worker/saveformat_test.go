package worker

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
)

// --save-format picks the best model's files: pth alone writes best.pth and
// no best.safetensors; both writes the two, with the same parameters.
func TestSaveFormat(t *testing.T) {
	data := synthData(t, 8)
	for _, c := range []struct {
		format    string
		st, pth   bool
		bestModel string
	}{
		{"pth", false, true, configs.BestPthFile},
		{"both", true, true, configs.BestFile},
		{"safetensors", true, false, configs.BestFile},
	} {
		t.Run(c.format, func(t *testing.T) {
			out := t.TempDir()
			cfg := tinyConfig(data, out)
			cfg.Epochs, cfg.SaveFormat = 1, c.format
			train(t, cfg)
			for name, want := range map[string]bool{configs.BestFile: c.st, configs.BestPthFile: c.pth} {
				if _, err := os.Stat(filepath.Join(out, name)); (err == nil) != want {
					t.Errorf("%s written: %v, want %v", name, err == nil, want)
				}
			}
			if got := cfg.BestModel(); got != filepath.Join(out, c.bestModel) {
				t.Errorf("BestModel %s, want %s", got, c.bestModel)
			}
			if !c.st || !c.pth {
				return
			}
			a, _, err := alexnet.LoadModel(filepath.Join(out, configs.BestFile))
			if err != nil {
				t.Fatal(err)
			}
			b, meta, err := alexnet.LoadModel(filepath.Join(out, configs.BestPthFile))
			if err != nil {
				t.Fatal(err)
			}
			if b.Spec != a.Spec || meta.Variant != "tiny" {
				t.Fatalf("best.pth: spec %+v, want %+v", b.Spec, a.Spec)
			}
			for i := range a.Flat {
				if math.Float32bits(a.Flat[i]) != math.Float32bits(b.Flat[i]) {
					t.Fatalf("parameter %d: best.pth %v, best.safetensors %v", i, b.Flat[i], a.Flat[i])
				}
			}
		})
	}
}

// The setting travels to joined workers in the plan's job settings, and a
// bad one is refused naming the flag.
func TestSaveFormatConfig(t *testing.T) {
	cfg := configs.DefaultJob()
	cfg.Data, cfg.SaveFormat = "d", "pth"
	b, err := proto.Marshal(controlpb.NewJobSettings(cfg))
	if err != nil {
		t.Fatal(err)
	}
	var settings controlpb.JobSettings
	err = proto.Unmarshal(b, &settings)
	got := settings.Job()
	if err != nil || got.SaveFormat != "pth" || got.Validate() != nil {
		t.Errorf("from the plan: %q, %v", got.SaveFormat, err)
	}
	if configs.DefaultJob().SaveFormat != "both" {
		t.Errorf("default %q, want both", configs.DefaultJob().SaveFormat)
	}
	cfg.SaveFormat = "onnx"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--save-format") {
		t.Errorf("save format onnx: %v", err)
	}
}
