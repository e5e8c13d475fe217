package worker

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
)

// --normalize reaches the training loader (the same seed gives another loss)
// and the best model's metadata; an unknown name is refused.
func TestNormalizeSetting(t *testing.T) {
	if configs.DefaultJob().Normalize != "seed" {
		t.Errorf("default normalize %q, want seed", configs.DefaultJob().Normalize)
	}
	data := synthData(t, 8)
	loss := map[string]float64{}
	for _, norm := range []string{"seed", "imagenet"} {
		out := t.TempDir()
		cfg := tinyConfig(data, out)
		cfg.Epochs, cfg.Dropout, cfg.Normalize = 1, 0, norm
		_, res := train(t, cfg)
		loss[norm] = res[0].TrainLoss
		_, meta, err := alexnet.LoadModel(filepath.Join(out, configs.BestFile))
		if err != nil {
			t.Fatal(err)
		}
		if meta.Normalize != norm {
			t.Errorf("normalize %s: the best model's metadata says %q", norm, meta.Normalize)
		}
	}
	if loss["seed"] == loss["imagenet"] {
		t.Errorf("the same train loss %v with both normalisations: the loader ignored the setting", loss["seed"])
	}
	cfg := tinyConfig(data, t.TempDir())
	cfg.Normalize = "ImageNet"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `--normalize: "ImageNet", want seed or imagenet`) {
		t.Errorf("normalize ImageNet: %v", err)
	}
}
