package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/alexring/alexring/sharding"
)

// The source every test splits: three classes of fake photos (the split
// reads names, never pixels), a licence at the root, and files that are not
// images.
var classSizes = map[string]int{"daisy": 25, "roses": 13, "tulips": 41}

func photo(class string, i int) (name string, body []byte) {
	ext := ".jpg"
	if i%7 == 3 {
		ext = ".JPG" // extensions match whatever their case
	}
	return fmt.Sprintf("%s_%03d%s", class, (i*37)%101, ext), []byte(fmt.Sprintf("%s photo %d", class, i))
}

// sourceFiles are the source's files by relative path.
func sourceFiles() map[string][]byte {
	files := map[string][]byte{
		"LICENSE.txt":       []byte("All photos are licensed CC-BY 2.0 by their authors.\n"),
		"daisy/notes.txt":   []byte("not an image"),
		"roses/.DS_Store":   []byte("finder"),
		"tulips/._x.jpg":    []byte("AppleDouble, not a photo"),
		"tulips/Thumbs.db":  []byte("windows"),
		".hidden/readme.md": []byte("hidden folder"),
	}
	for c, n := range classSizes {
		for i := range n {
			name, body := photo(c, i)
			files[c+"/"+name] = body
		}
	}
	return files
}

func writeTree(t *testing.T, root string, files map[string][]byte) {
	t.Helper()
	for rel, body := range files {
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// writeTgz writes files into a gzipped tar under top/, with folder entries,
// in a shuffled order, as tar tools write them.
func writeTgz(t *testing.T, file, top string, files map[string][]byte) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	names := make([]string, 0, len(files))
	for rel := range files {
		names = append(names, rel)
	}
	slices.Sort(names)
	slices.Reverse(names)
	dirs := map[string]bool{}
	add := func(h *tar.Header, body []byte) {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	add(&tar.Header{Name: top + "/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	for _, rel := range names {
		if d := filepath.Dir(rel); d != "." && !dirs[d] {
			dirs[d] = true
			add(&tar.Header{Name: top + "/" + d + "/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
		}
		add(&tar.Header{Name: top + "/" + rel, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(files[rel]))}, files[rel])
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// runSplit runs the command in this process.
func runSplit(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

// tree lists a folder's files (relative, slashes) with their contents.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(root, p)
		got[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// checkSplit checks a written split against the source: every photo once,
// int(n*0.1) of each class in val/, the licence at the root, nothing else.
func checkSplit(t *testing.T, out string, files map[string][]byte) map[string][]string {
	t.Helper()
	got := tree(t, out)
	if got["LICENSE.txt"] != string(files["LICENSE.txt"]) {
		t.Errorf("LICENSE.txt not copied to %s", out)
	}
	val := map[string][]string{}
	seen := 0
	for rel, body := range got {
		if rel == "LICENSE.txt" {
			continue
		}
		parts := strings.Split(rel, "/")
		if len(parts) != 3 || (parts[0] != "train" && parts[0] != "val") {
			t.Errorf("unexpected file %s", rel)
			continue
		}
		if want, ok := files[parts[1]+"/"+parts[2]]; !ok || string(want) != body {
			t.Errorf("%s is not the source's %s/%s", rel, parts[1], parts[2])
		}
		if !isImage(parts[2]) {
			t.Errorf("%s is not an image, yet was written", rel)
		}
		if parts[0] == "val" {
			val[parts[1]] = append(val[parts[1]], parts[2])
		}
		seen++
	}
	total := 0
	for c, n := range classSizes {
		total += n
		if len(val[c]) != n/10 {
			t.Errorf("class %s: %d in val, want int(%d * 0.1) = %d", c, len(val[c]), n, n/10)
		}
		slices.Sort(val[c])
	}
	if seen != total {
		t.Errorf("%d photos written, want each of the %d once", seen, total)
	}
	return val
}

func TestSplitFolder(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "flower_photos")
	files := sourceFiles()
	writeTree(t, src, files)
	out := filepath.Join(dir, "flowers")
	code, stdout, stderr := runSplit("--out", out, src)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"daisy           23 train     2 val", "wrote 3 classes, 72 train + 7 val images", "80 files hard-linked, 0 copied", "skipped 5 files"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	val := checkSplit(t, out, files)
	// The trainer's loader reads it.
	train, valDS, err := sharding.ScanSplits(out)
	if err != nil {
		t.Fatalf("the loader's scan: %v", err)
	}
	if !slices.Equal(train.Classes, []string{"daisy", "roses", "tulips"}) || len(train.Samples) != 72 || len(valDS.Samples) != 7 {
		t.Errorf("the loader sees classes %v, %d train and %d val images; want 3 classes, 72 and 7", train.Classes, len(train.Samples), len(valDS.Samples))
	}
	// Hard links: the same files, no second copy.
	for c, names := range val {
		a, _ := os.Stat(filepath.Join(src, c, names[0]))
		b, _ := os.Stat(filepath.Join(out, "val", c, names[0]))
		if !os.SameFile(a, b) {
			t.Errorf("val/%s/%s is not a hard link of the source", c, names[0])
		}
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("out's mode: %v %v, want 0755", st.Mode(), err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*partial*")); len(leftovers) > 0 {
		t.Errorf("temporary folders left: %v", leftovers)
	}

	// Deterministic; the seed changes it; --copy copies.
	out2 := filepath.Join(dir, "again")
	if code, _, stderr := runSplit("--copy", "--out", out2, src); code != 0 {
		t.Fatalf("second run: exit %d: %s", code, stderr)
	}
	if !mapsEqual(checkSplit(t, out2, files), val) {
		t.Error("the same seed gave another split")
	}
	name := val["daisy"][0]
	a, _ := os.Stat(filepath.Join(src, "daisy", name))
	b, _ := os.Stat(filepath.Join(out2, "val", "daisy", name))
	if os.SameFile(a, b) {
		t.Error("--copy hard-linked")
	}
	out3 := filepath.Join(dir, "seed1")
	if code, _, stderr := runSplit("--seed", "1", "--out", out3, src); code != 0 {
		t.Fatalf("--seed 1: exit %d: %s", code, stderr)
	}
	if mapsEqual(checkSplit(t, out3, files), val) {
		t.Error("--seed 1 gave seed 0's split")
	}

	// The split is the one Python draws, as the README says.
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Log("no python3: the split is not compared with Python's random.sample")
		return
	}
	script := `import json, os, random, sys
EXT = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
root = sys.argv[1]
classes = sorted(c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c)) and not c.startswith("."))
random.seed(0)
val = {}
for c in classes:
    images = sorted(f for f in os.listdir(os.path.join(root, c)) if f.lower().endswith(EXT) and not f.startswith("."))
    val[c] = sorted(random.sample(images, k=int(len(images) * 0.1)))
print(json.dumps(val))`
	pyOut, err := exec.Command(py, "-c", script, src).Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	var want map[string][]string
	if err := json.Unmarshal(pyOut, &want); err != nil {
		t.Fatalf("python3 printed %q: %v", pyOut, err)
	}
	if !mapsEqual(val, want) {
		t.Errorf("val split %v\nPython's random.sample: %v", val, want)
	}
}

func mapsEqual(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// The archive as downloaded (flower_photos/ inside) gives the folder's split.
func TestSplitArchive(t *testing.T) {
	dir := t.TempDir()
	files := sourceFiles()
	tgz := filepath.Join(dir, "flower_photos.tgz")
	writeTgz(t, tgz, "flower_photos", files)
	out := filepath.Join(dir, "from-tgz")
	code, stdout, stderr := runSplit("--out", out, tgz)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "80 files extracted") {
		t.Errorf("output: %s", stdout)
	}
	fromTgz := checkSplit(t, out, files)

	// The same files as a folder, and the folder it extracts to (one top
	// folder above the classes, as tar xzf leaves it).
	folder := filepath.Join(dir, "extracted", "flower_photos")
	writeTree(t, folder, files)
	for _, src := range []string{folder, filepath.Dir(folder)} {
		o := filepath.Join(dir, "out-"+filepath.Base(src))
		if code, _, stderr := runSplit("--out", o, src); code != 0 {
			t.Fatalf("%s: exit %d: %s", src, code, stderr)
		}
		if !mapsEqual(checkSplit(t, o, files), fromTgz) {
			t.Errorf("%s split otherwise than the archive", src)
		}
	}

	// An uncompressed tar with ./ names and no top folder reads the same.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for rel, body := range files {
		tw.WriteHeader(&tar.Header{Name: "./" + rel, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write(body)
	}
	tw.Close()
	plain := filepath.Join(dir, "plain.tar")
	os.WriteFile(plain, buf.Bytes(), 0o644)
	o := filepath.Join(dir, "out-plain")
	if code, _, stderr := runSplit("--out", o, plain); code != 0 {
		t.Fatalf("plain tar: exit %d: %s", code, stderr)
	}
	if !mapsEqual(checkSplit(t, o, files), fromTgz) {
		t.Error("the plain tar split otherwise")
	}
}

func TestSplitRefuses(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeTree(t, src, sourceFiles())

	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) (args []string)
		code  int
		want  string // in the error
	}{
		{"a non-empty --out", func(t *testing.T) []string {
			out := filepath.Join(dir, "full")
			writeTree(t, out, map[string][]byte{"keep.txt": []byte("mine")})
			return []string{"--out", out, src}
		}, 1, "full is not empty: refusing"},
		{"no --out", func(t *testing.T) []string { return []string{src} }, 2, "give --out DIR"},
		{"--val out of range", func(t *testing.T) []string { return []string{"--val", "1", "--out", filepath.Join(dir, "o1"), src} }, 2, "--val 1"},
		{"a missing source", func(t *testing.T) []string {
			return []string{"--out", filepath.Join(dir, "o2"), filepath.Join(dir, "nowhere.tgz")}
		}, 1, "nowhere.tgz: no such file"},
		{"a class too small for a val image", func(t *testing.T) []string {
			s := filepath.Join(dir, "small")
			writeTree(t, s, map[string][]byte{"a/1.jpg": nil, "a/2.jpg": nil, "b/1.png": nil})
			for i := range 20 {
				writeTree(t, s, map[string][]byte{fmt.Sprintf("b/%d.png", i): nil})
			}
			return []string{"--out", filepath.Join(dir, "o3"), s}
		}, 1, "class a: 2 images leave 0 for validation"},
		{"a class without images", func(t *testing.T) []string {
			s := filepath.Join(dir, "empty-class")
			writeTree(t, s, map[string][]byte{"a/notes.txt": nil, "b/1.png": nil})
			return []string{"--out", filepath.Join(dir, "o4"), s}
		}, 1, "no images (.jpg"},
		{"a folder inside a class", func(t *testing.T) []string {
			s := filepath.Join(dir, "nested")
			writeTree(t, s, map[string][]byte{"a/1.jpg": nil, "a/more/2.jpg": nil, "b/1.png": nil})
			return []string{"--out", filepath.Join(dir, "o5"), s}
		}, 1, filepath.Join("nested", "a", "more") + ": a folder inside class a"},
		{"not an archive", func(t *testing.T) []string {
			f := filepath.Join(dir, "photos.tgz")
			os.WriteFile(f, []byte{0x1f, 0x8b, 1, 2, 3}, 0o644)
			return []string{"--out", filepath.Join(dir, "o6"), f}
		}, 1, "photos.tgz"},
		{"an entry leaving the archive", func(t *testing.T) []string {
			f := filepath.Join(dir, "evil.tar")
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			tw.WriteHeader(&tar.Header{Name: "a/../../x.jpg", Typeflag: tar.TypeReg, Size: 0})
			tw.Close()
			os.WriteFile(f, buf.Bytes(), 0o644)
			return []string{"--out", filepath.Join(dir, "o7"), f}
		}, 1, `entry "a/../../x.jpg" leaves the archive's folder`},
		{"a truncated archive", func(t *testing.T) []string {
			good := filepath.Join(dir, "good.tgz")
			writeTgz(t, good, "flower_photos", sourceFiles())
			b, _ := os.ReadFile(good)
			f := filepath.Join(dir, "truncated.tgz")
			os.WriteFile(f, b[:len(b)/2], 0o644)
			return []string{"--out", filepath.Join(dir, "o8"), f}
		}, 1, "truncated.tgz: not a readable .tgz/.tar"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.setup(t)
			code, stdout, stderr := runSplit(args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q (stdout %q)", code, stderr, tc.code, tc.want, stdout)
			}
		})
	}
	if got := tree(t, filepath.Join(dir, "full")); len(got) != 1 || got["keep.txt"] != "mine" {
		t.Errorf("the non-empty --out was changed: %v", got)
	}
	for i := 1; i <= 8; i++ {
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("o%d", i))); err == nil {
			t.Errorf("a failed split left o%d", i)
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*partial*")); len(leftovers) > 0 {
		t.Errorf("temporary folders left: %v", leftovers)
	}

	// An empty --out that exists is fine.
	out := filepath.Join(dir, "empty")
	os.Mkdir(out, 0o755)
	if code, _, stderr := runSplit("--out", out, src); code != 0 {
		t.Errorf("an empty --out: exit %d: %s", code, stderr)
	}
}
