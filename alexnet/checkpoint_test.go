package alexnet

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func tinyParams(t testing.TB, seed uint64) *Params {
	t.Helper()
	spec, err := NewSpec("tiny", 5)
	if err != nil {
		t.Fatal(err)
	}
	p := NewParams(spec)
	p.Init(seed)
	return p
}

func TestModelRoundTrip(t *testing.T) {
	p := tinyParams(t, 3)
	path := filepath.Join(t.TempDir(), "best.safetensors")
	meta := ModelMeta{Classes: []string{"a", "b", "c", "d", "e"}, Epoch: 4, ValAccuracy: 0.625}
	if err := SaveModel(path, p, meta); err != nil {
		t.Fatal(err)
	}
	q, got, err := LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	if q.Spec != p.Spec {
		t.Errorf("spec %+v, want %+v", q.Spec, p.Spec)
	}
	if !equalFloats(p.Flat, q.Flat) {
		t.Error("parameters changed in the round trip")
	}
	if got.Epoch != 4 || got.ValAccuracy != 0.625 || strings.Join(got.Classes, ",") != "a,b,c,d,e" || got.Variant != "tiny" {
		t.Errorf("metadata %+v", got)
	}
	if err := SaveModel(path, p, ModelMeta{Classes: []string{"a"}}); err == nil {
		t.Error("saved 1 class name for a 5-class model")
	}
}

// The fixture's weights were written by the reference (PyTorch) side; a
// state_dict without our metadata loads by its shapes.
func TestLoadPyTorchStateDict(t *testing.T) {
	p, meta, err := LoadModel("testdata/tiny/weights.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	if p.Spec.Variant != "tiny" || p.Spec.Classes != 5 || meta.Classes != nil {
		t.Errorf("loaded %+v %+v", p.Spec, meta)
	}
	f, _ := ReadSafetensors("testdata/tiny/weights.safetensors")
	names, tensors := paramTensors(p)
	path := filepath.Join(t.TempDir(), "nometa.safetensors")
	if err := WriteSafetensors(path, names, tensors, nil); err != nil {
		t.Fatal(err)
	}
	q, _, err := LoadModel(path)
	if err != nil {
		t.Fatalf("state_dict without metadata: %v", err)
	}
	if q.Spec.Variant != "tiny" {
		t.Errorf("inferred variant %s, want tiny", q.Spec.Variant)
	}
	w, _ := f.Tensors["features.0.weight"].Float32s()
	if !equalFloats(w, q.Flat[:len(w)]) {
		t.Error("weights differ")
	}
}

func equalFloats(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBadModelFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	p := tinyParams(t, 1)
	if err := SaveModel(good, p, ModelMeta{}); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(good)
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	rewrite := func(name string, edit func(names []string, ts map[string]STTensor) []string) string {
		names, ts := paramTensors(p)
		names = edit(names, ts)
		path := filepath.Join(dir, name)
		if err := WriteSafetensors(path, names, ts, nil); err != nil {
			t.Fatal(err)
		}
		return path
	}
	rnd := make([]byte, 4096)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range rnd {
		rnd[i] = byte(r.Uint32())
	}
	hugeHeader := make([]byte, 16)
	binary.LittleEndian.PutUint64(hugeHeader, 1<<40)

	cases := []struct {
		name, path, want string
	}{
		{"missing file", filepath.Join(dir, "nope.safetensors"), "no such file"},
		{"empty", write("empty", nil), "shorter than the 8-byte header"},
		{"random bytes", write("random", rnd), "header length"},
		{"huge header length", write("huge", hugeHeader), "header length"},
		{"truncated data", write("trunc", raw[:len(raw)-100]), "truncated"},
		{"truncated header", write("trunch", raw[:40]), "header length"},
		{"not JSON", write("notjson", append(binary.LittleEndian.AppendUint64(nil, 4), []byte("{{{{")...)), "not JSON"},
		{"wrong dtype", rewrite("dtype", func(n []string, ts map[string]STTensor) []string {
			t := ts["features.3.bias"]
			ts["features.3.bias"] = STTensor{DType: "I32", Shape: t.Shape, Data: t.Data}
			return n
		}), `"features.3.bias" is I32, want F32`},
		{"wrong shape", rewrite("shape", func(n []string, ts map[string]STTensor) []string {
			t := ts["classifier.1.weight"]
			ts["classifier.1.weight"] = STTensor{DType: "F32", Shape: []int{t.Shape[1], t.Shape[0]}, Data: t.Data}
			return n
		}), `"classifier.1.weight" has shape [16 64], want [64 16]`},
		{"missing tensor", rewrite("missing", func(n []string, ts map[string]STTensor) []string {
			return append(n[:2:2], n[3:]...)
		}), `missing tensor "features.3.weight"`},
		{"extra tensor", rewrite("extra", func(n []string, ts map[string]STTensor) []string {
			ts["features.1.weight"] = F32Tensor([]float32{1}, 1)
			return append(n, "features.1.weight")
		}), "unexpected tensors [features.1.weight]"},
		{"foreign model", rewrite("foreign", func(n []string, ts map[string]STTensor) []string {
			ts["fc.weight"] = F32Tensor([]float32{1}, 1)
			return []string{"fc.weight"}
		}), "not an AlexNet"},
		{"size mismatch", write("sizemm", func() []byte {
			h := []byte(`{"classifier.6.bias":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}}`)
			return append(append(binary.LittleEndian.AppendUint64(nil, uint64(len(h))), h...), make([]byte, 16)...)
		}()), "16 bytes for F32[5], want 20"},
		{"overlap", write("overlap", func() []byte {
			h := []byte(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`)
			return append(append(binary.LittleEndian.AppendUint64(nil, uint64(len(h))), h...), make([]byte, 4)...)
		}()), "overlap or gap"},
	}
	for _, c := range cases {
		_, _, err := LoadModel(c.path)
		if err == nil {
			t.Errorf("%s: loaded", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || (!strings.Contains(err.Error(), c.path) && c.name != "missing file") {
			t.Errorf("%s: error %q, want it to name the file and say %q", c.name, err, c.want)
		}
	}
	if !bytes.Equal(raw, mustRead(t, good)) {
		t.Error("good file changed")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTrainStateRoundTrip(t *testing.T) {
	p := tinyParams(t, 5)
	adam, _ := NewAdam(DefaultAdam(), len(p.Flat))
	g := make([]float32, len(p.Flat))
	for i := range g {
		g[i] = float32(i%7) - 3
	}
	adam.Update(p.Flat, g)
	adam.Update(p.Flat, g)
	rng := rand.NewPCG(7, 8)
	rng.Uint64()
	rs, _ := rng.MarshalBinary()
	st := &TrainState{Params: p, Adam: adam, Epoch: 3, BestAcc: 0.5, Seed: 1<<63 + 5, RNGState: rs, Classes: []string{"a", "b", "c", "d", "e"},
		Normalize: "imagenet", Freeze: FreezeFeatures}
	path := filepath.Join(t.TempDir(), "state.safetensors")
	if err := SaveTrainState(path, st); err != nil {
		t.Fatal(err)
	}
	got, err := LoadTrainState(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Epoch != 3 || got.BestAcc != 0.5 || got.Seed != st.Seed || got.Adam.Step != 2 || got.Adam.Config != adam.Config ||
		!bytes.Equal(got.RNGState, rs) || strings.Join(got.Classes, "") != "abcde" || got.Params.Spec != p.Spec ||
		got.Normalize != "imagenet" || got.Freeze != FreezeFeatures {
		t.Errorf("state %+v", got)
	}
	// A state written before normalize and freeze were recorded trained
	// with the seed's normalisation and nothing frozen; a freeze that does
	// not parse is refused.
	f, err := ReadSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	delete(f.Metadata, metaNorm)
	delete(f.Metadata, metaFreeze)
	old := filepath.Join(t.TempDir(), "old.safetensors")
	if err := WriteSafetensors(old, []string{"params", "adam.m", "adam.v"}, f.Tensors, f.Metadata); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadTrainState(old); err != nil || got.Normalize != "seed" || got.Freeze != FreezeNone {
		t.Errorf("a state without normalize and freeze: %v, %v", got, err)
	}
	f.Metadata[metaFreeze] = "classifier"
	if err := WriteSafetensors(old, []string{"params", "adam.m", "adam.v"}, f.Tensors, f.Metadata); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTrainState(old); err == nil || !strings.Contains(err.Error(), `"freeze"`) {
		t.Errorf("freeze classifier: %v", err)
	}
	if !equalFloats(got.Params.Flat, p.Flat) || !equalFloats(got.Adam.M, adam.M) || !equalFloats(got.Adam.V, adam.V) {
		t.Error("vectors changed in the round trip")
	}
	// A model file is not a training state, and the other way round.
	model := filepath.Join(t.TempDir(), "m.safetensors")
	SaveModel(model, p, ModelMeta{})
	if _, err := LoadTrainState(model); err == nil || !strings.Contains(err.Error(), "not a training state") {
		t.Errorf("model file as state: %v", err)
	}
	if _, _, err := LoadModel(path); err == nil {
		t.Error("training state loaded as a model")
	}
}

func stBytes(header string, body int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, make([]byte, body)...)
}

// A header's sizes never size an allocation before they are checked against
// the file: these panicked (makeslice) or were accepted.
func TestHeaderClaimsAreBoundedByTheFile(t *testing.T) {
	// [2^61] of F64 is 2^64 bytes, which wrapped to 0 and matched the offsets.
	if _, err := ParseSafetensors(stBytes(`{"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}}`, 0)); err == nil {
		t.Error("a tensor of 2^64 bytes in none was accepted")
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		return p
	}
	models := map[string]string{
		"2^61 classes": `{"__metadata__":{"variant":"tiny"},"classifier.6.bias":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}}`,
		"BOOL classes": `{"__metadata__":{"variant":"seed"},"classifier.6.bias":{"dtype":"BOOL","shape":[64],"data_offsets":[0,64]}}`,
	}
	for name, h := range models {
		body := 0
		if strings.Contains(h, "BOOL") {
			body = 64
		}
		if _, _, err := LoadModel(write(name, stBytes(h, body))); err == nil || !strings.Contains(err.Error(), "classifier.6.bias") {
			t.Errorf("%s: %v", name, err)
		}
	}
	meta := `"format":"alexring-train-state-1","variant":"tiny","classes":"[]","epoch":"1","best_accuracy":"0.5","seed":"1","adam.step":"1","adam.lr":"0.001","adam.beta1":"%s","adam.beta2":"0.999","adam.eps":"1e-8","rng":"","num_classes":"%s"`
	t3 := `"params":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"adam.m":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"adam.v":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}`
	states := []struct{ beta1, classes, want string }{
		{"0.9", "1000000000000000", "does not fit the 1 values"},
		{"0.9", "5e300", `"num_classes"`},
		{"NaN", "5", `"adam.beta1"`},
	}
	for _, s := range states {
		h := `{"__metadata__":{` + fmt.Sprintf(meta, s.beta1, s.classes) + `},` + t3 + `}`
		if _, err := LoadTrainState(write("state", stBytes(h, 12))); err == nil || !strings.Contains(err.Error(), s.want) {
			t.Errorf("num_classes %s, beta1 %s: %v, want %q", s.classes, s.beta1, err, s.want)
		}
	}
}
