package sharding

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/alexring/alexring/internal/atomicfile"
)

// Extensions are torchvision's IMG_EXTENSIONS, matched case-insensitively.
var Extensions = []string{".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}

// Sample is one image of a split and its class index.
type Sample struct {
	Path  string
	Label int
}

// Dataset is one split of an ImageFolder: root/<class>/**/<image>.
type Dataset struct {
	Root    string
	Classes []string // sorted class folder names; the index is the label
	Samples []Sample // by class, then in torchvision's walk order
}

func hasImageExtension(name string) bool {
	lower := strings.ToLower(name)
	for _, ext := range Extensions {
		if strings.HasSuffix(lower, ext) {
			return true
		}
	}
	return false
}

// Scan reads an ImageFolder split as torchvision.datasets.ImageFolder does:
// classes are the sorted sub-folders (symlinks to folders count), and each
// class's images are found by walking it with symlinks followed, folders in
// sorted path order and files sorted within a folder.
func Scan(root string) (*Dataset, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("sharding: scan %s: %w", root, err)
	}
	ds := &Dataset{Root: root}
	for _, e := range entries {
		if isDir(filepath.Join(root, e.Name())) {
			ds.Classes = append(ds.Classes, e.Name())
		}
	}
	if len(ds.Classes) == 0 {
		return nil, fmt.Errorf("sharding: %s has no class folders (want %s/<class>/<image>)", root, root)
	}
	sort.Strings(ds.Classes)
	var empty []string
	for label, class := range ds.Classes {
		files, err := walkImages(filepath.Join(root, class))
		if err != nil {
			return nil, fmt.Errorf("sharding: scan %s: %w", root, err)
		}
		if len(files) == 0 {
			empty = append(empty, filepath.Join(root, class))
		}
		for _, f := range files {
			ds.Samples = append(ds.Samples, Sample{Path: f, Label: label})
		}
	}
	if len(empty) > 0 {
		return nil, fmt.Errorf("sharding: no images (%s) in class folders %s", strings.Join(Extensions, " "), strings.Join(empty, ", "))
	}
	return ds, nil
}

func isDir(path string) bool {
	st, err := os.Stat(path) // follows symlinks, like os.scandir's is_dir()
	return err == nil && st.IsDir()
}

// walkImages is os.walk(dir, followlinks=True) sorted by folder path, with the
// files of each folder sorted. A folder seen twice through links is walked once.
func walkImages(dir string) ([]string, error) {
	type folder struct {
		path  string
		files []string
	}
	var folders []folder
	seen := map[string]bool{}
	var walk func(path string) error
	walk = func(path string) error {
		if real, err := filepath.EvalSymlinks(path); err == nil {
			if seen[real] {
				return nil
			}
			seen[real] = true
		}
		entries, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		f := folder{path: path}
		var subs []string
		for _, e := range entries {
			p := filepath.Join(path, e.Name())
			if isDir(p) {
				subs = append(subs, p)
			} else if hasImageExtension(e.Name()) {
				f.files = append(f.files, e.Name())
			}
		}
		sort.Strings(f.files)
		folders = append(folders, f)
		for _, s := range subs {
			if err := walk(s); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(dir); err != nil {
		return nil, err
	}
	sort.Slice(folders, func(i, j int) bool { return folders[i].path < folders[j].path })
	var out []string
	for _, f := range folders {
		for _, name := range f.files {
			out = append(out, filepath.Join(f.path, name))
		}
	}
	return out, nil
}

// ScanSplits scans root/train and root/val and checks they name the same classes.
func ScanSplits(root string) (train, val *Dataset, err error) {
	if train, err = Scan(filepath.Join(root, "train")); err != nil {
		return nil, nil, err
	}
	if val, err = Scan(filepath.Join(root, "val")); err != nil {
		return nil, nil, err
	}
	if strings.Join(train.Classes, "\x00") != strings.Join(val.Classes, "\x00") {
		return nil, nil, fmt.Errorf("sharding: %s has classes %v but %s has %v; they must be the same", train.Root, train.Classes, val.Root, val.Classes)
	}
	return train, val, nil
}

// Fingerprint is a hash of the split's listing (paths relative to the root,
// labels), so that ranks can check they see the same dataset.
func (d *Dataset) Fingerprint() uint64 {
	h := fnv.New64a()
	for _, c := range d.Classes {
		fmt.Fprintf(h, "class %s\n", c)
	}
	for _, s := range d.Samples {
		rel, _ := filepath.Rel(d.Root, s.Path)
		fmt.Fprintf(h, "%d %s\n", s.Label, rel)
	}
	return h.Sum64()
}

// WriteClassIndices writes classes as the seed's class_indices.json:
// json.dump({"0": "daisy", ...}, indent=4), non-ASCII escaped as Python does.
func WriteClassIndices(path string, classes []string) error {
	var b strings.Builder
	b.WriteString("{")
	for i, c := range classes {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "\n    %s: %s", pyJSONString(strconv.Itoa(i)), pyJSONString(c))
	}
	if len(classes) > 0 {
		b.WriteString("\n")
	}
	b.WriteString("}")
	return atomicfile.Write(path, 0o644, func(w io.Writer) error {
		_, err := io.WriteString(w, b.String())
		return err
	})
}

// pyJSONString quotes s as Python's json module does with ensure_ascii.
func pyJSONString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r < 0x20 || (r > 0x7e && r < 0x10000):
			fmt.Fprintf(&b, `\u%04x`, r)
		case r >= 0x10000:
			r -= 0x10000
			fmt.Fprintf(&b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// ReadClassIndices reads a class_indices.json: {"0": name, ...} with keys 0..n-1
// written as the seed writes them (the seed looks names up by str(index), so
// "01" or "+1" would not be found there).
func ReadClassIndices(path string) ([]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sharding: %w", err)
	}
	var m map[string]*string
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("sharding: %s is not a class index ({\"0\": \"name\", ...}): %w", path, err)
	}
	classes := make([]string, len(m))
	for k, v := range m {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= len(m) || strconv.Itoa(i) != k {
			return nil, fmt.Errorf("sharding: %s: key %q is not an index in 0..%d", path, k, len(m)-1)
		}
		if v == nil {
			return nil, fmt.Errorf("sharding: %s: class %s has no name (null)", path, k)
		}
		classes[i] = *v
	}
	if len(classes) == 0 {
		return nil, fmt.Errorf("sharding: %s names no classes", path)
	}
	return classes, nil
}
