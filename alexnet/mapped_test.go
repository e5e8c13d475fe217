package alexnet

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// A model that training wrote opens as a view of its file: the same values
// as LoadModel's, no copy, and writing the parameters leaves the file as it
// was (the mapping is copy-on-write).
func TestOpenModelMapsTrainingsFile(t *testing.T) {
	p := tinyParams(t, 5)
	path := filepath.Join(t.TempDir(), "best.safetensors")
	if err := SaveModel(path, p, ModelMeta{Classes: []string{"a", "b", "c", "d", "e"}, Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	q, meta, closeModel, err := OpenModel(path)
	if err != nil {
		t.Fatal(err)
	}
	if q.Spec != p.Spec || !equalFloats(p.Flat, q.Flat) || meta.Epoch != 2 || len(meta.Classes) != 5 {
		t.Fatalf("opened %+v %+v, want the saved model", q.Spec, meta)
	}
	if runtime.GOOS == "linux" {
		if got := mappingOf(t, &q.Flat[0]); got != path {
			t.Errorf("the parameters lie in %q, want a mapping of %s", got, path)
		}
	}
	q.Flat[0] += 1 // copy-on-write: the file keeps its bytes
	if err := closeModel(); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("writing the mapped parameters changed the file")
	}
}

// mappingOf is the file mapped at v's address ("" for anonymous memory, the
// Go heap), from /proc/self/maps.
func mappingOf(t *testing.T, v *float32) string {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skipf("no /proc/self/maps: %v", err)
	}
	at := uint64(uintptr(unsafe.Pointer(v)))
	for _, line := range strings.Split(string(maps), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		l, _ := strconv.ParseUint(lo, 16, 64)
		h, _ := strconv.ParseUint(hi, 16, 64)
		if at >= l && at < h {
			if len(fields) >= 6 {
				return fields[5]
			}
			return ""
		}
	}
	t.Fatalf("address %#x is in no mapping", at)
	return ""
}

// Only a file in the layout's order is viewed; PyTorch's is copied out, and
// either way the values are LoadModel's.
func TestOpenModelViewsOnlyWhenInLayoutOrder(t *testing.T) {
	dir := t.TempDir()
	p := tinyParams(t, 6)
	ours := filepath.Join(dir, "ours.safetensors")
	if err := SaveModel(ours, p, ModelMeta{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		view bool
	}{
		{ours, true},
		// PyTorch's writer orders the tensors by name: the parameters are
		// copied out and the mapping closed at once.
		{"testdata/tiny/weights.safetensors", false},
	} {
		f, err := MapSafetensors(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if !f.Mapped() {
			t.Skipf("%s was read, not mapped, on this platform", tc.path)
		}
		spec, _ := NewSpec("tiny", 5)
		flat := f.mappedFlat(spec.Layout())
		if (flat != nil) != tc.view {
			t.Errorf("%s: a view of the mapping: %v, want %v", tc.path, flat != nil, tc.view)
		}
		f.Close()

		q, _, closeModel, err := OpenModel(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		want, _, err := LoadModel(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if !equalFloats(q.Flat, want.Flat) {
			t.Errorf("%s: OpenModel's parameters differ from LoadModel's", tc.path)
		}
		if err := closeModel(); err != nil {
			t.Error(err)
		}
		if !tc.view {
			q.Flat[0] = 1 // a copy: still usable after close
		}
	}
}

// A mapping is viewed as floats only when aligned: a header whose length is
// not a multiple of 4 puts the body off alignment, and the file is copied.
func TestMappedFlatNeedsAlignment(t *testing.T) {
	p := tinyParams(t, 7)
	names, tensors := paramTensors(p)
	path := filepath.Join(t.TempDir(), "odd.safetensors")
	if err := WriteSafetensors(path, names, tensors, nil); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	// Re-pad the header to 8n+1 bytes (JSON allows the trailing space).
	n := int(raw[0]) | int(raw[1])<<8 | int(raw[2])<<16
	header := strings.TrimRight(string(raw[8:8+n]), " ") + " "
	for len(header)%8 != 1 {
		header += " "
	}
	odd := stBytes(header, 0)
	odd = append(odd[:8+len(header)], raw[8+n:]...)
	if err := os.WriteFile(path, odd, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := MapSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	switch {
	case !f.Mapped():
		t.Skip("the file was read, not mapped, on this platform")
	case uintptr(unsafe.Pointer(&f.body[0]))%4 == 0:
		t.Fatal("the re-padded body is aligned")
	case f.mappedFlat(p.Layout) != nil:
		t.Error("an unaligned body was viewed as floats")
	}
	q, _, closeModel, err := OpenModel(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closeModel()
	if !equalFloats(q.Flat, p.Flat) {
		t.Error("the unaligned file's parameters differ")
	}
}

// Bad files are refused as LoadModel refuses them, naming the file, and a
// missing one says so.
func TestOpenModelErrors(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.safetensors")
	os.WriteFile(short, []byte("1234"), 0o644)
	garbage := filepath.Join(dir, "garbage.safetensors")
	os.WriteFile(garbage, bytes.Repeat([]byte{0xff}, 64), 0o644)
	for _, path := range []string{short, garbage, filepath.Join(dir, "missing.safetensors")} {
		_, _, closeModel, err := OpenModel(path)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %v, want one naming the file", path, err)
		}
		if closeModel == nil || closeModel() != nil {
			t.Errorf("%s: close must be callable and do nothing after an error", path)
		}
		_, _, lerr := LoadModel(path)
		if err != nil && lerr != nil && err.Error() != lerr.Error() {
			t.Errorf("%s: OpenModel says %q, LoadModel %q", path, err, lerr)
		}
	}
}

// Closing a read (not mapped) file, or closing twice, does nothing.
func TestSTFileCloseTwice(t *testing.T) {
	f, err := MapSafetensors("testdata/tiny/weights.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	r, err := ReadSafetensors("testdata/tiny/weights.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	if r.Mapped() || r.Close() != nil || len(r.Tensors) == 0 {
		t.Error("closing a read file changed it")
	}
}
