package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/alexring/alexring/sharding"
)

// source is what a split reads: per class its image names, and the files
// that travel to the output's root (the photos' LICENSE.txt).
type source struct {
	root    string              // the folder or archive given
	archive bool                // a tar (gzipped or not) rather than a folder
	prefix  string              // the one top folder stripped (flower_photos/), "" for none
	classes map[string][]string // class -> image file names, sorted
	extras  []string            // files kept at the output's root
	skipped []string            // files that are not images, as found
}

// splitConfig is what the flags set.
type splitConfig struct {
	Val  float64 // share of each class for validation: k = int(n * Val)
	Seed uint64  // Python's random.seed
	Copy bool    // copy even where a hard link would do
}

// isImage says whether a file name is one ImageFolder loads (torchvision's
// extensions, as the loader matches them). Dot files (.DS_Store, macOS's
// ._name.jpg) are not images whatever their extension.
func isImage(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	ext := strings.ToLower(path.Ext(name))
	return slices.Contains(sharding.Extensions, ext)
}

// isExtra says whether a file at the source's root travels to the output:
// the licence that credits the photos' authors.
func isExtra(name string) bool {
	return strings.HasPrefix(strings.ToUpper(name), "LICENSE")
}

// listing is one file found in a source, its path relative to the root with
// slashes.
type listing struct {
	rel     string
	dir     bool
	special bool // a link or device in an archive: no bytes to copy
}

// scan reads the source's names: a folder's tree, or an archive's entries
// (one pass over it). Either is SOURCE/<class>/<image> files, with files at
// the root (LICENSE.txt) and, as flower_photos.tgz has it, possibly all of it
// inside one top folder.
func scan(root string) (*source, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	src := &source{root: root, archive: !st.IsDir(), classes: map[string][]string{}}
	var files []listing
	if src.archive {
		err = walkArchive(root, func(h *tar.Header, name string, _ io.Reader) error {
			files = append(files, listing{rel: name, dir: h.Typeflag == tar.TypeDir, special: h.Typeflag != tar.TypeDir && h.Typeflag != tar.TypeReg})
			return nil
		})
	} else {
		files, err = listFolder(root)
	}
	if err != nil {
		return nil, err
	}
	src.prefix = topFolder(files)
	if err := src.sort(files); err != nil {
		return nil, err
	}
	if len(src.classes) == 0 {
		return nil, fmt.Errorf("%s: no class folders (want <class>/<image> files)", root)
	}
	for c, names := range src.classes {
		if len(names) == 0 {
			return nil, fmt.Errorf("%s: no images (%s) in class folder %s", root, strings.Join(sharding.Extensions, " "), c)
		}
		slices.Sort(names)
	}
	return src, nil
}

// listFolder lists the tree under root, relative to it.
func listFolder(root string) ([]listing, error) {
	// WalkDir does not enter a root that is a symbolic link.
	dir, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, err
	}
	var files []listing
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		isDir := d.IsDir()
		if d.Type()&fs.ModeSymlink != 0 {
			// A linked image is the image; WalkDir does not enter a
			// linked folder, so that is refused rather than missed.
			st, err := os.Stat(p)
			if err != nil {
				return err
			}
			if isDir = st.IsDir(); isDir {
				return fmt.Errorf("%s: a link to a folder; give the folder itself", p)
			}
		}
		files = append(files, listing{rel: filepath.ToSlash(rel), dir: isDir})
		return nil
	})
	return files, err
}

// sort files (under src.prefix) into src's classes, extras and skipped
// files; a folder inside a class is an error.
func (src *source) sort(files []listing) error {
	where := func(rel string) string {
		if src.archive {
			return src.root + ": " + src.prefix + rel
		}
		return filepath.Join(src.root, src.prefix, rel)
	}
	for _, f := range files {
		rel := strings.TrimPrefix(f.rel, src.prefix)
		if rel == "" || rel == strings.TrimSuffix(src.prefix, "/") {
			continue
		}
		parts := strings.Split(rel, "/")
		class := parts[0]
		hidden := strings.HasPrefix(class, ".") // .git, .DS_Store: not part of the data
		switch {
		case hidden || f.special:
			if !f.dir {
				src.skipped = append(src.skipped, where(rel))
			}
		case len(parts) == 1 && f.dir:
			if _, ok := src.classes[class]; !ok {
				src.classes[class] = nil
			}
		case len(parts) == 1 && isExtra(class):
			src.extras = append(src.extras, class)
		case len(parts) == 2 && !f.dir && isImage(parts[1]):
			src.classes[class] = append(src.classes[class], parts[1])
		case len(parts) > 2 || f.dir:
			return fmt.Errorf("%s: a folder inside class %s; want <class>/<image> files", where(path.Join(parts[:2]...)), class)
		default:
			src.skipped = append(src.skipped, where(rel))
		}
	}
	return nil
}

// topFolder is "NAME/" when every file is inside the one folder NAME (the
// archive's flower_photos/), else "".
func topFolder(files []listing) string {
	top := ""
	for _, f := range files {
		first, _, nested := strings.Cut(f.rel, "/")
		if !nested && !f.dir {
			return "" // a file at the root
		}
		if top != "" && first != top {
			return ""
		}
		top = first
	}
	if top == "" {
		return ""
	}
	return top + "/"
}

// walkArchive calls fn for every entry of a tar file, gzipped or not, with
// its cleaned name; names that leave the archive's root are refused.
func walkArchive(file string, fn func(h *tar.Header, name string, r io.Reader) error) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		defer gz.Close()
		r = gz
	}
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		h, err := tr.Next()
		if err == io.EOF {
			if n == 0 {
				return fmt.Errorf("%s: an empty archive", file)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: not a readable .tgz/.tar (after %d entries): %w", file, n, err)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if name == "." {
			continue
		}
		if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("%s: entry %q leaves the archive's folder", file, h.Name)
		}
		if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeDir && isImage(path.Base(name)) {
			// Links and devices have no bytes to copy: skipped by scan when
			// they are not images, refused when they would be.
			return fmt.Errorf("%s: %s is a link or special file, not an image's bytes", file, h.Name)
		}
		if err := fn(h, name, tr); err != nil {
			return err
		}
	}
}

// classSplit is one class's share.
type classSplit struct {
	Class      string
	Train, Val []string
}

// plan draws the split: for each class in sorted order, int(n * val) of its
// sorted image names for validation by random.sample, one generator seeded
// once for all classes, the rest for training. This is, in Python,
//
//	random.seed(seed)
//	for c in sorted(classes):
//	    images = sorted(images_of[c])
//	    val = set(random.sample(images, k=int(len(images) * 0.1)))
func plan(src *source, cfg splitConfig) ([]classSplit, error) {
	if !(cfg.Val > 0 && cfg.Val < 1) {
		return nil, fmt.Errorf("--val %v: want a share between 0 and 1", cfg.Val)
	}
	rng := newPyRandom(cfg.Seed)
	classes := make([]string, 0, len(src.classes))
	for c := range src.classes {
		classes = append(classes, c)
	}
	slices.Sort(classes)
	var out []classSplit
	for _, c := range classes {
		images := src.classes[c]
		k := int(float64(len(images)) * cfg.Val)
		if k == 0 || k == len(images) {
			return nil, fmt.Errorf("class %s: %d images leave %d for validation at --val %v; each split needs at least one image", c, len(images), k, cfg.Val)
		}
		idx, err := rng.sample(len(images), k)
		if err != nil {
			return nil, fmt.Errorf("class %s: %w", c, err)
		}
		val := make([]bool, len(images))
		for _, i := range idx {
			val[i] = true
		}
		s := classSplit{Class: c}
		for i, name := range images {
			if val[i] {
				s.Val = append(s.Val, name)
			} else {
				s.Train = append(s.Train, name)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// result counts what write did.
type result struct {
	Linked, Copied int
}

// write puts the split into out: out/train/<class>/ and out/val/<class>/,
// and the source's root files (LICENSE.txt) at out/. It writes into a new
// folder beside out and renames it to out at the end, so a failure leaves
// nothing behind; it refuses an out that exists and is not empty.
func write(src *source, splits []classSplit, out string, cfg splitConfig) (res result, err error) {
	tmp, err := partialOut(out)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	dest, err := destinations(src, splits, tmp)
	if err != nil {
		return res, err
	}
	if src.archive {
		res.Copied, err = extract(src, dest)
	} else {
		res, err = placeAll(src, dest, cfg.Copy)
	}
	if err != nil {
		return res, err
	}
	// rename(2) replaces an empty folder; elsewhere remove it first.
	if err := os.Rename(tmp, out); err != nil {
		if rmErr := os.Remove(out); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
			return res, fmt.Errorf("--out %s: %w", out, err)
		}
		if err := os.Rename(tmp, out); err != nil {
			return res, fmt.Errorf("--out %s: %w", out, err)
		}
	}
	return res, nil
}

// partialOut checks that out is new or empty and makes the folder beside it
// that write fills.
func partialOut(out string) (string, error) {
	if entries, err := os.ReadDir(out); err == nil && len(entries) > 0 {
		return "", fmt.Errorf("--out %s is not empty: refusing to write over it (give a new folder)", out)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("--out: %w", err)
	}
	parent := filepath.Dir(filepath.Clean(out))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("--out: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(out)+".partial-")
	if err != nil {
		return "", fmt.Errorf("--out: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp's 0700 would become out's
		os.RemoveAll(tmp)
		return "", err
	}
	return tmp, nil
}

// destinations makes the split's class folders in tmp and says where each
// source file goes, by its name relative to the source's top folder.
func destinations(src *source, splits []classSplit, tmp string) (map[string]string, error) {
	dest := map[string]string{}
	for _, s := range splits {
		for split, names := range map[string][]string{"train": s.Train, "val": s.Val} {
			if err := os.MkdirAll(filepath.Join(tmp, split, s.Class), 0o755); err != nil {
				return nil, err
			}
			for _, n := range names {
				dest[s.Class+"/"+n] = filepath.Join(tmp, split, s.Class, n)
			}
		}
	}
	for _, e := range src.extras {
		dest[e] = filepath.Join(tmp, e)
	}
	return dest, nil
}

// extract writes the archive's files of dest (a second pass over it), and
// says how many.
func extract(src *source, dest map[string]string) (copied int, err error) {
	err = walkArchive(src.root, func(h *tar.Header, name string, r io.Reader) error {
		to, ok := dest[strings.TrimPrefix(name, src.prefix)]
		if !ok || h.Typeflag != tar.TypeReg {
			return nil
		}
		delete(dest, strings.TrimPrefix(name, src.prefix))
		if err := writeFile(to, r); err != nil {
			return fmt.Errorf("%s: %s: %w", src.root, name, err)
		}
		copied++
		return nil
	})
	if err != nil {
		return copied, err
	}
	for rel := range dest {
		return copied, fmt.Errorf("%s: %s%s was listed but not found on the second read (did the archive change?)", src.root, src.prefix, rel)
	}
	return copied, nil
}

// placeAll links (or copies) the folder's files of dest.
func placeAll(src *source, dest map[string]string, copyOnly bool) (res result, err error) {
	for rel, to := range dest {
		from := filepath.Join(src.root, filepath.FromSlash(src.prefix+rel))
		linked, err := place(from, to, copyOnly)
		if err != nil {
			return res, fmt.Errorf("%s: %w", from, err)
		}
		if linked {
			res.Linked++
		} else {
			res.Copied++
		}
	}
	return res, nil
}

// place hard-links from to to, or copies it when a link cannot be made
// (another filesystem, a filesystem without links) or copy is set.
func place(from, to string, copyOnly bool) (linked bool, err error) {
	// link(2) links a symbolic link itself, which may point elsewhere from
	// the new place: link what it points at.
	if from, err = filepath.EvalSymlinks(from); err != nil {
		return false, err
	}
	if !copyOnly {
		if err := os.Link(from, to); err == nil {
			return true, nil
		}
	}
	f, err := os.Open(from)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return false, writeFile(to, f)
}

// writeFile writes r's bytes into a new file.
func writeFile(to string, r io.Reader) error {
	f, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
