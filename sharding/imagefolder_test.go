package sharding

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func touch(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// awkwardTree is a split with names that trip up naive scanners. The expected
// listing was checked against torchvision 0.14's ImageFolder on the same tree.
func awkwardTree(t *testing.T) string {
	root := t.TempDir()
	for _, p := range []string{
		"Zebra/b.JPG", "Zebra/a.jpeg", "Zebra/notes.txt",
		"apple pie/x.png", "apple pie/nested/deeper/y.PNG", "apple pie/nested/a.bmp", "apple pie/Nested2/c.webp",
		"été/1.tiff", "été/.hidden.jpg",
		"v1.2/img.ppm", "v1.2/img.PGM", "v1.2/z.tif",
	} {
		touch(t, filepath.Join(root, p), []byte("x"))
	}
	touch(t, filepath.Join(root, "stray.jpg"), []byte("x")) // a file at the top is no class
	other := t.TempDir()
	touch(t, filepath.Join(other, "linked.jpg"), []byte("x"))
	if err := os.Symlink(other, filepath.Join(root, "Zebra", "link")); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestScanLikeTorchvision(t *testing.T) {
	root := awkwardTree(t)
	ds, err := Scan(root)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ds.Classes, "|"); got != "Zebra|apple pie|v1.2|été" {
		t.Errorf("classes %s", got)
	}
	var got []string
	for _, s := range ds.Samples {
		rel, _ := filepath.Rel(root, s.Path)
		got = append(got, rel+"="+ds.Classes[s.Label])
	}
	want := []string{
		"Zebra/a.jpeg=Zebra", "Zebra/b.JPG=Zebra", "Zebra/link/linked.jpg=Zebra",
		"apple pie/x.png=apple pie", "apple pie/Nested2/c.webp=apple pie", "apple pie/nested/a.bmp=apple pie",
		"apple pie/nested/deeper/y.PNG=apple pie",
		"v1.2/img.PGM=v1.2", "v1.2/img.ppm=v1.2", "v1.2/z.tif=v1.2",
		"été/.hidden.jpg=été", "été/1.tiff=été",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("samples:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestScanErrors(t *testing.T) {
	root := t.TempDir()
	if _, err := Scan(filepath.Join(root, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing folder: %v", err)
	}
	if _, err := Scan(root); err == nil || !strings.Contains(err.Error(), "no class folders") {
		t.Errorf("no classes: %v", err)
	}
	touch(t, filepath.Join(root, "a", "1.png"), []byte("x"))
	os.MkdirAll(filepath.Join(root, "b", "sub"), 0o755)
	touch(t, filepath.Join(root, "b", "readme.txt"), []byte("x"))
	if _, err := Scan(root); err == nil || !strings.Contains(err.Error(), filepath.Join(root, "b")) {
		t.Errorf("empty class: %v", err)
	}

	data := t.TempDir()
	touch(t, filepath.Join(data, "train", "cat", "1.png"), []byte("x"))
	touch(t, filepath.Join(data, "train", "dog", "1.png"), []byte("x"))
	touch(t, filepath.Join(data, "val", "cat", "1.png"), []byte("x"))
	touch(t, filepath.Join(data, "val", "cow", "1.png"), []byte("x"))
	_, _, err := ScanSplits(data)
	if err == nil || !strings.Contains(err.Error(), "[cat dog]") || !strings.Contains(err.Error(), "[cat cow]") {
		t.Errorf("different class sets: %v", err)
	}
	os.RemoveAll(filepath.Join(data, "val"))
	if _, _, err := ScanSplits(data); err == nil || !strings.Contains(err.Error(), filepath.Join(data, "val")) {
		t.Errorf("missing val: %v", err)
	}
}

func TestClassIndicesLikeTheSeed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "class_indices.json")
	classes := []string{"daisy", "dandelion", `q"uote`, "été"}
	if err := WriteClassIndices(path, classes); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	// What json.dump({0: ...}, f, indent=4) writes.
	want := "{\n    \"0\": \"daisy\",\n    \"1\": \"dandelion\",\n    \"2\": \"q\\\"uote\",\n    \"3\": \"\\u00e9t\\u00e9\"\n}"
	if string(raw) != want {
		t.Errorf("class_indices.json:\n%s\nwant:\n%s", raw, want)
	}
	back, err := ReadClassIndices(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(back, "|") != strings.Join(classes, "|") {
		t.Errorf("read back %v", back)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"0": "a", "2": "b"}`), 0o644)
	if _, err := ReadClassIndices(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("gap in indices: %v", err)
	}
}

// Keys must be the indices as the seed writes them, each class named: "00"
// next to "0" would leave class 1 without a name.
func TestReadClassIndicesRefusesOddKeys(t *testing.T) {
	dir := t.TempDir()
	for name, js := range map[string]string{
		"zero twice": `{"0": "a", "00": "b"}`,
		"plus sign":  `{"0": "a", "+1": "b"}`,
		"padded":     `{"0": "a", "01": "b"}`,
		"null name":  `{"0": "a", "1": null}`,
		"not object": `["a", "b"]`,
		"empty":      `{}`,
		"null":       `null`,
	} {
		path := filepath.Join(dir, "ci.json")
		os.WriteFile(path, []byte(js), 0o644)
		if classes, err := ReadClassIndices(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %q, %v", name, classes, err)
		}
	}
}
