package inference

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/sharding"
)

// Run in process: an image it cannot read is counted and named, the others
// are still predicted; a model it cannot open is bad input.
func TestRunCountsFailedImages(t *testing.T) {
	dir := t.TempDir()
	if err := sharding.Synthesize(dir, sharding.SynthConfig{Train: 1, Val: 1, Size: 32, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	spec, _ := alexnet.NewSpec("tiny", 5)
	p := alexnet.NewParams(spec)
	p.Init(1)
	model := filepath.Join(dir, "best.safetensors")
	if err := alexnet.SaveModel(model, p, alexnet.ModelMeta{Classes: sharding.SynthClasses}); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nope.png")
	var out, errb bytes.Buffer
	cfg := Config{Model: model, Images: []string{filepath.Join(dir, "val", "ring", "ring_0000.png"), missing}, ClassIndices: filepath.Join(dir, "class_indices.json"),
		GPU: -1, Conv: "auto", Stdout: &out, Stderr: &errb}
	failed, err := Run(t.Context(), cfg)
	if err != nil || failed != 1 || strings.Count(out.String(), "predicted: ") != 1 || !strings.Contains(errb.String(), "predict: ") || !strings.Contains(errb.String(), missing) {
		t.Errorf("failed %d err %v\nstdout:\n%s\nstderr:\n%s", failed, err, out.String(), errb.String())
	}
	cfg.Model = filepath.Join(dir, "nope.safetensors")
	if _, err := Run(t.Context(), cfg); !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), "nope.safetensors") {
		t.Errorf("a missing model: %v, want bad input naming it", err)
	}
}
