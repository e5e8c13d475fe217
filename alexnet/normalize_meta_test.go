package alexnet

import (
	"path/filepath"
	"testing"
)

// The model file carries its inputs' normalisation; one written without it
// (before the setting existed) loads as the seed's.
func TestModelMetaNormalize(t *testing.T) {
	p := tinyParams(t, 3)
	dir := t.TempDir()
	for give, want := range map[string]string{"imagenet": "imagenet", "seed": "seed", "": "seed"} {
		path := filepath.Join(dir, "m"+give+".safetensors")
		if err := SaveModel(path, p, ModelMeta{Normalize: give}); err != nil {
			t.Fatal(err)
		}
		if _, meta, err := LoadModel(path); err != nil || meta.Normalize != want {
			t.Errorf("saved %q: loaded %q (%v), want %q", give, meta.Normalize, err, want)
		}
		_, meta, closeModel, err := OpenModel(path)
		if err != nil || meta.Normalize != want {
			t.Errorf("saved %q: OpenModel %q (%v), want %q", give, meta.Normalize, err, want)
		}
		closeModel()
	}
	old := filepath.Join(dir, "old.safetensors")
	names, tensors := paramTensors(p)
	if err := WriteSafetensors(old, names, tensors, map[string]string{metaFormat: formatModel, metaVariant: "tiny"}); err != nil {
		t.Fatal(err)
	}
	if _, meta, err := LoadModel(old); err != nil || meta.Normalize != "seed" {
		t.Errorf("a file without %q: loaded %q (%v), want seed", metaNorm, meta.Normalize, err)
	}
}
