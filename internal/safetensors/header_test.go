package safetensors_test

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/internal/safetensors"
)

// The header read alone is the one alexnet's whole reader reads: its metadata
// and its tensors' dtypes, shapes and ranges.
func TestHeaderOfAlexnetsFiles(t *testing.T) {
	dir := t.TempDir()
	spec, err := alexnet.NewSpec("tiny", 3)
	if err != nil {
		t.Fatal(err)
	}
	p := alexnet.NewParams(spec)
	p.Init(1)
	adam, err := alexnet.NewAdam(alexnet.DefaultAdam(), len(p.Flat))
	if err != nil {
		t.Fatal(err)
	}
	state, model := filepath.Join(dir, "state.safetensors"), filepath.Join(dir, "best.safetensors")
	if err := alexnet.SaveTrainState(state, &alexnet.TrainState{Params: p, Adam: adam, Epoch: 3, BestAcc: 0.625, Seed: 7, RNGState: []byte{1}, Classes: []string{"a", "b", "c"}}); err != nil {
		t.Fatal(err)
	}
	if err := alexnet.SaveModel(model, p, alexnet.ModelMeta{Classes: []string{"a", "b", "c"}, Epoch: 2, ValAccuracy: 0.5}); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{state, model} {
		h, err := safetensors.ReadHeader(path)
		if err != nil {
			t.Fatal(err)
		}
		want, err := alexnet.ReadSafetensors(path)
		if err != nil {
			t.Fatal(err)
		}
		sameHeader(t, h, want)
	}
}

// sameHeader fails t where h is not the header of alexnet's reading of a file.
func sameHeader(t *testing.T, h *safetensors.Header, want *alexnet.STFile) {
	t.Helper()
	if !reflect.DeepEqual(h.Metadata, want.Metadata) {
		t.Fatalf("metadata %v, alexnet reads %v", h.Metadata, want.Metadata)
	}
	if len(h.Tensors) != len(want.Tensors) {
		t.Fatalf("%d tensors, alexnet reads %d", len(h.Tensors), len(want.Tensors))
	}
	var data int64
	for name, wt := range want.Tensors {
		got, ok := h.Tensors[name]
		if !ok || got.DType != wt.DType || !reflect.DeepEqual(append([]int{}, got.Shape...), append([]int{}, wt.Shape...)) || got.Offsets[1]-got.Offsets[0] != int64(len(wt.Data)) {
			t.Fatalf("tensor %q: %+v, alexnet reads %s%v of %d bytes", name, got, wt.DType, wt.Shape, len(wt.Data))
		}
		data += int64(len(wt.Data))
	}
	if h.DataBytes != data {
		t.Fatalf("%d data bytes, alexnet's tensors hold %d", h.DataBytes, data)
	}
}

// What is not a header is refused with an error naming the file, before a
// length it gives is allocated.
func TestReadHeaderRefuses(t *testing.T) {
	dir := t.TempDir()
	withLen := func(n uint64, rest string) []byte {
		b := binary.LittleEndian.AppendUint64(nil, n)
		return append(b, rest...)
	}
	tensor := `{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "shorter than the 8-byte header length"},
		{"absurd length", withLen(1<<63, "{}"), "header length 9223372036854775808 does not fit a 10-byte file"},
		{"past the end", withLen(3, "{}"), "header length 3 does not fit"},
		{"over the bound", withLen(safetensors.MaxHeader+1, "{}"), "does not fit"},
		{"not json", withLen(2, "{]"), "header is not JSON"},
		{"bad metadata", withLen(22, `{"__metadata__":[1,2]}`), "__metadata__ is not a map of strings"},
		{"bad tensor", withLen(8, `{"x":[]}`), `tensor "x"`},
		{"truncated data", withLen(uint64(len(tensor)), tensor+"1234"), `tensor "x" has offsets [0, 8] outside the 4 data bytes`},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".safetensors")
		if err := os.WriteFile(path, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := safetensors.ReadHeader(path)
		if err == nil || !errors.Is(err, safetensors.ErrBad) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want an error naming %s with %q", c.name, err, path, c.want)
		}
		if _, perr := safetensors.Parse(c.data); perr == nil || !errors.Is(perr, safetensors.ErrBad) {
			t.Errorf("%s from bytes: %v", c.name, perr)
		}
	}
	if _, err := safetensors.ReadHeader(filepath.Join(dir, "nope.safetensors")); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "nope.safetensors") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := safetensors.ReadHeader(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("a folder: %v", err)
	}
}

// FuzzParseHeader feeds arbitrary bytes to the header reader: it must not
// panic, a header it takes must keep its tensors in its data, and a file
// alexnet's whole reader takes it must read as alexnet does. Run it with
//
//	go test -run '^$' -fuzz '^FuzzParseHeader$' -fuzztime 30s ./internal/safetensors/
func FuzzParseHeader(f *testing.F) {
	dir := f.TempDir()
	seed := filepath.Join(dir, "seed.safetensors")
	tensors := map[string]alexnet.STTensor{"a": alexnet.F32Tensor([]float32{1, 2}, 2), "b": alexnet.F32Tensor([]float32{3}, 1, 1)}
	md := map[string]string{"format": "alexring-train-state-1", "epoch": "2", "best_accuracy": "0.5"}
	if err := alexnet.WriteSafetensors(seed, []string{"a", "b"}, tensors, md); err != nil {
		f.Fatal(err)
	}
	data, err := os.ReadFile(seed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := safetensors.Parse(data)
		if err == nil {
			for name, tn := range h.Tensors {
				if tn.Offsets[0] < 0 || tn.Offsets[1] < tn.Offsets[0] || tn.Offsets[1] > h.DataBytes || h.DataBytes > int64(len(data)) {
					t.Fatalf("tensor %q at %v of %d data bytes", name, tn.Offsets, h.DataBytes)
				}
			}
		}
		if want, werr := alexnet.ParseSafetensors(data); werr == nil {
			if err != nil {
				t.Fatalf("alexnet reads the file; the header reader refuses it: %v", err)
			}
			sameHeader(t, h, want)
		}
	})
}
