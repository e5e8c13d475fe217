package sharding

import (
	"bytes"
	"errors"
	"image"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fuzzMaxPixels keeps the fuzzed images small, so that the fuzzer runs fast
// and the allocation bound below is tight.
const fuzzMaxPixels = 1 << 16

// fuzzAllocBudget is the most one decode may allocate: per pixel of the limit,
// the decoded image in the widest layout (8 bytes), a JPEG's coefficients
// (4 bytes a component, 4 components) and the RGB copy (3); per input byte a
// few copies; and what x/image's decoders allocate from a header before
// reading, bounded whatever the size (a VP8 partition of up to 16 MiB, TIFF
// values in chunks of 10 MiB).
func fuzzAllocBudget(data []byte) uint64 {
	return 32*fuzzMaxPixels + 16*uint64(len(data)) + 32<<20
}

// FuzzDecode feeds the loader's path from file bytes to tensor (decode, then
// the train and the validation transform) with one Decoder per input, as a
// loader goroutine keeps one: no input may panic, allocate beyond the pixel
// limit's budget, or spoil the good JPEG decoded after it.
func FuzzDecode(f *testing.F) {
	good := encodeJPEG(f, image.NewGray(image.Rect(0, 0, 20, 10)))
	var want RGB
	if err := Decode(good, &want); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st := sampleState{dec: newDecoder(fuzzMaxPixels)}
		defer st.close()
		dst := make([]float32, 3*8*8)
		var errs [2]error
		for i, cfg := range []LoaderConfig{{Side: 8, Augment: true, Seed: 3}, {Side: 8}} {
			n := allocated(func() { errs[i] = st.decodeTransform(data, 1, cfg, dst) })
			if budget := fuzzAllocBudget(data); n > budget {
				t.Fatalf("%d bytes allocated for a %d-byte input, budget %d (%v)", n, len(data), budget, errs[i])
			}
		}
		if (errs[0] == nil) != (errs[1] == nil) {
			t.Fatalf("decoded once but not twice: %v", errs)
		}
		if err := errs[0]; err != nil {
			if !errors.Is(err, ErrDecode) {
				t.Fatalf("error not marked ErrDecode: %v", err)
			}
		} else if st.rgb.W < 1 || st.rgb.H < 1 || st.rgb.W*st.rgb.H > fuzzMaxPixels || len(st.rgb.Pix) != 3*st.rgb.W*st.rgb.H {
			t.Fatalf("decoded %dx%d with %d bytes", st.rgb.W, st.rgb.H, len(st.rgb.Pix))
		}
		if err := st.dec.Decode(good, &st.rgb); err != nil || !bytes.Equal(st.rgb.Pix, want.Pix) {
			t.Fatalf("a good JPEG after this input: %v", err)
		}
	})
}

// FuzzReadClassIndices: any file is read back as an error naming it, or as
// classes that write and read back the same.
func FuzzReadClassIndices(f *testing.F) {
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "class_indices.json")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		classes, err := ReadClassIndices(path)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if len(classes) == 0 {
			t.Fatal("no classes and no error")
		}
		again := filepath.Join(dir, "again.json")
		if err := WriteClassIndices(again, classes); err != nil {
			t.Fatal(err)
		}
		back, err := ReadClassIndices(again)
		if err != nil || !slices.Equal(back, classes) {
			t.Fatalf("%q written and read back as %q, %v", classes, back, err)
		}
	})
}
