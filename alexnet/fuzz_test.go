package alexnet

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// Fuzz targets for the bytes of model and training-state files, with their
// corpus in testdata/fuzz/<name>. Run one with
//
//	go test -run '^$' -fuzz '^FuzzLoadModel$' -fuzztime 30s ./alexnet/
//
// FuzzParseSafetensors takes a whole file. The model and state targets take
// the JSON header and the length of the data after it (zeros): the data's
// values never change how a file parses, and a valid file is then a few
// hundred bytes of input rather than 100 KB, which the fuzzer mutates and
// minimises in no time.

// safetensorsFile is the file of a header and size data bytes.
func safetensorsFile(header []byte, size uint32) []byte {
	data := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	data = append(data, header...)
	return append(data, make([]byte, size%(4<<20))...)
}

// splitSafetensors is the header and data length of a file written here.
func splitSafetensors(f *testing.F, path string) ([]byte, uint32) {
	data, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(data)
	return data[8 : 8+n], uint32(uint64(len(data)) - 8 - n)
}

// onDisk writes data where the readers of files (header first) take it, so
// that they are fuzzed beside those of bytes.
func onDisk(t *testing.T, dir string, data []byte) string {
	path := filepath.Join(dir, "fuzz.safetensors")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func FuzzParseSafetensors(f *testing.F) {
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseSafetensors(data)
		_, ferr := ReadSafetensors(onDisk(t, dir, data))
		if (err == nil) != (ferr == nil) {
			t.Fatalf("from bytes: %v; from the file: %v", err, ferr)
		}
		if err != nil {
			return
		}
		for name, ts := range st.Tensors {
			n := dtypeSizes[ts.DType]
			for _, d := range ts.Shape {
				n *= d
			}
			if n != len(ts.Data) {
				t.Fatalf("tensor %q: %d bytes for %s%v", name, len(ts.Data), ts.DType, ts.Shape)
			}
		}
	})
}

func FuzzLoadModel(f *testing.F) {
	dir := f.TempDir()
	model := filepath.Join(dir, "model.safetensors")
	if err := SaveModel(model, tinyParams(f, 1), ModelMeta{Classes: []string{"a", "b", "c", "d", "e"}, Epoch: 2, ValAccuracy: 0.5}); err != nil {
		f.Fatal(err)
	}
	for _, path := range []string{model, "testdata/tiny/weights.safetensors"} {
		header, size := splitSafetensors(f, path)
		f.Add(header, size)
	}
	f.Fuzz(func(t *testing.T, header []byte, size uint32) {
		data := safetensorsFile(header, size)
		p, meta, err := ParseModel(data)
		_, _, ferr := LoadModel(onDisk(t, dir, data))
		if (err == nil) != (ferr == nil) {
			t.Fatalf("from bytes: %v; from the file: %v", err, ferr)
		}
		if err != nil {
			return
		}
		// What loads is whole and no larger than the file: no header's claim
		// sizes an allocation.
		if len(p.Flat) != p.Spec.NumParams() || 4*len(p.Flat) > len(data) {
			t.Fatalf("%d parameters from %d bytes (spec %+v)", len(p.Flat), len(data), p.Spec)
		}
		if len(meta.Classes) != 0 && len(meta.Classes) != p.Spec.Classes {
			t.Fatalf("%d class names for %d classes", len(meta.Classes), p.Spec.Classes)
		}
	})
}

func FuzzLoadTrainState(f *testing.F) {
	p := tinyParams(f, 2)
	adam, _ := NewAdam(DefaultAdam(), len(p.Flat))
	adam.Step = 3
	rs, _ := rand.NewPCG(1, 2).MarshalBinary()
	dir := f.TempDir()
	state := filepath.Join(dir, "state.safetensors")
	if err := SaveTrainState(state, &TrainState{Params: p, Adam: adam, Epoch: 1, BestAcc: 0.25, Seed: 7, RNGState: rs, Classes: []string{"a", "b", "c", "d", "e"}}); err != nil {
		f.Fatal(err)
	}
	header, size := splitSafetensors(f, state)
	f.Add(header, size)
	f.Fuzz(func(t *testing.T, header []byte, size uint32) {
		data := safetensorsFile(header, size)
		s, err := ParseTrainState(data)
		_, ferr := LoadTrainState(onDisk(t, dir, data))
		if (err == nil) != (ferr == nil) {
			t.Fatalf("from bytes: %v; from the file: %v", err, ferr)
		}
		if err != nil {
			return
		}
		n := len(s.Params.Flat)
		if n != s.Params.Spec.NumParams() || len(s.Adam.M) != n || len(s.Adam.V) != n || 12*n > len(data) {
			t.Fatalf("%d parameters, moments %d/%d, from %d bytes", n, len(s.Adam.M), len(s.Adam.V), len(data))
		}
		if s.Epoch < 0 || s.Adam.Step < 0 || !(s.BestAcc >= 0 && s.BestAcc <= 1) || !(s.Adam.Config.Beta1 >= 0 && s.Adam.Config.Beta2 >= 0) || s.Adam.Config.Validate() != nil {
			t.Fatalf("state %+v, Adam %+v", s, s.Adam.Config)
		}
		if len(s.Classes) != 0 && len(s.Classes) != s.Params.Spec.Classes {
			t.Fatalf("%d class names for %d classes", len(s.Classes), s.Params.Spec.Classes)
		}
	})
}
