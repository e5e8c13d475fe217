package sharding

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func synthDataset(t *testing.T, cfg SynthConfig) string {
	t.Helper()
	dir := t.TempDir()
	if err := Synthesize(dir, cfg); err != nil {
		t.Fatal(err)
	}
	return dir
}

func loadAll(t *testing.T, ds *Dataset, shard []int, cfg LoaderConfig, bad *BadFiles) (images [][]float32, labels [][]int, replaced int) {
	t.Helper()
	l, err := NewLoader(context.Background(), ds, shard, cfg, bad)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for {
		b, err := l.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		per := 3 * cfg.Side * cfg.Side
		images = append(images, append([]float32(nil), b.Images[:b.Count*per]...))
		labels = append(labels, append([]int(nil), b.Labels[:b.Count]...))
		l.Release(b)
	}
	return images, labels, l.Replaced()
}

func TestLoaderDeterministicAcrossGoroutines(t *testing.T) {
	dir := synthDataset(t, SynthConfig{Train: 7, Val: 1, Size: 40, Seed: 1, JPEG: true})
	ds, err := Scan(filepath.Join(dir, "train"))
	if err != nil {
		t.Fatal(err)
	}
	plan := Plan{Seed: 9, Epoch: 2, World: 2, Size: len(ds.Samples), Shuffle: true}
	shard, _ := plan.Shard(1)
	cfg := LoaderConfig{Side: 32, Batch: 4, Augment: true, Seed: 9, Epoch: 2, Goroutines: 1, Prefetch: 1}
	bad := NewBadFiles(zap.NewNop())
	ref, refLabels, _ := loadAll(t, ds, shard, cfg, bad)
	if len(ref) != (len(shard)+3)/4 || len(ref[len(ref)-1]) != (len(shard)%4)*3*32*32 {
		t.Fatalf("%d batches for %d samples", len(ref), len(shard))
	}
	for _, g := range []int{2, 3, 8} {
		cfg.Goroutines, cfg.Prefetch = g, g
		got, gotLabels, _ := loadAll(t, ds, shard, cfg, bad)
		for i := range ref {
			for j := range ref[i] {
				if got[i][j] != ref[i][j] {
					t.Fatalf("%d goroutines: batch %d differs at %d", g, i, j)
				}
			}
			for j := range refLabels[i] {
				if gotLabels[i][j] != refLabels[i][j] || refLabels[i][j] != ds.Samples[shard[i*4+j]].Label {
					t.Fatalf("%d goroutines: labels differ", g)
				}
			}
		}
	}
	// Another epoch crops differently.
	cfg.Epoch = 3
	other, _, _ := loadAll(t, ds, shard, cfg, bad)
	same := true
	for j := range ref[0] {
		if other[0][j] != ref[0][j] {
			same = false
			break
		}
	}
	if same {
		t.Error("epochs 2 and 3 gave the same augmented batch")
	}
}

func TestLoaderReplacesBadFiles(t *testing.T) {
	dir := synthDataset(t, SynthConfig{Train: 4, Val: 1, Size: 24, Seed: 2})
	class := filepath.Join(dir, "train", "circle")
	good, _ := os.ReadFile(filepath.Join(class, "circle_0000.png"))
	zoo := map[string][]byte{"truncated.png": good[:len(good)/2], "zero.jpg": nil, "text.jpg": []byte("hello")}
	for name, data := range zoo {
		os.WriteFile(filepath.Join(class, name), data, 0o644)
	}
	unreadable := filepath.Join(class, "unreadable.png")
	os.WriteFile(unreadable, good, 0o000)
	for _, f := range []string{"zoo_cmyk.jpg", "zoo_gray16.png", "zoo_palette.png", "zoo_gray.png"} {
		data, _ := os.ReadFile(filepath.Join("testdata", f))
		os.WriteFile(filepath.Join(class, f), data, 0o644)
	}
	ds, err := Scan(filepath.Join(dir, "train"))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	bad := NewBadFiles(zap.New(core))
	plan := Plan{Seed: 1, World: 1, Size: len(ds.Samples), Shuffle: true}
	shard, _ := plan.Shard(0)
	cfg := LoaderConfig{Side: 16, Batch: 5, Augment: true, Seed: 1, Goroutines: 3}
	batches, _, replaced := loadAll(t, ds, shard, cfg, bad)
	wantBad := 3
	if f, err := os.Open(unreadable); err == nil { // root reads anything
		f.Close()
	} else {
		wantBad++
	}
	if replaced != wantBad || bad.Count() != wantBad {
		t.Errorf("replaced %d, bad files %d, want %d", replaced, bad.Count(), wantBad)
	}
	total := 0
	for _, b := range batches {
		total += len(b) / (3 * 16 * 16)
	}
	if total != len(ds.Samples) {
		t.Errorf("%d samples loaded, want %d: batches must stay full", total, len(ds.Samples))
	}
	// A second epoch meets the same files but logs nothing new.
	n := logs.Len()
	cfg.Epoch = 1
	loadAll(t, ds, shard, cfg, bad)
	if logs.Len() != n || n != wantBad {
		t.Errorf("%d warnings after two epochs (%d after one), want %d once", logs.Len(), n, wantBad)
	}
	for _, e := range logs.All() {
		if e.ContextMap()["path"] == "" {
			t.Errorf("warning without the path: %v", e)
		}
	}
}

func TestLoaderCancelLeaksNothing(t *testing.T) {
	dir := synthDataset(t, SynthConfig{Train: 6, Val: 1, Size: 24, Seed: 3})
	ds, _ := Scan(filepath.Join(dir, "train"))
	shard, _ := Plan{World: 1, Size: len(ds.Samples)}.Shard(0)
	// In a bubble, synctest.Wait returns once every goroutine the loader
	// started has exited or is blocked for good: no waiting out a timer.
	synctest.Test(t, func(t *testing.T) {
		before := liveGoroutines()
		ctx, cancel := context.WithCancel(context.Background())
		l, err := NewLoader(ctx, ds, shard, LoaderConfig{Side: 16, Batch: 2, Goroutines: 4, Prefetch: 1}, NewBadFiles(zap.NewNop()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Next(); err != nil { // hold the only buffer: the workers block
			t.Fatal(err)
		}
		cancel()
		if _, err := l.Next(); !errors.Is(err, context.Canceled) {
			t.Errorf("Next after cancel: %v", err)
		}
		l.Close()
		synctest.Wait()
		if n := liveGoroutines(); n > before {
			t.Errorf("%d goroutines after Close, %d before", n, before)
		}
	})
}

// liveGoroutines counts the goroutines that have not exited. (Not
// runtime.NumGoroutine: that counts one that has just exited until the
// runtime frees it.)
func liveGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte("\ngoroutine ")) + 1
		}
		buf = make([]byte, 2*len(buf))
	}
}

// loadedIndices runs a loader over shard and returns how often each dataset
// index was delivered.
func loadedIndices(t *testing.T, ds *Dataset, shard []int, cfg LoaderConfig, bad *BadFiles) (seen map[int]int, replaced int) {
	t.Helper()
	l, err := NewLoader(context.Background(), ds, shard, cfg, bad)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	seen = map[int]int{}
	for {
		b, err := l.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range b.Indices[:b.Count] {
			seen[i]++
		}
		l.Release(b)
	}
	return seen, l.Replaced()
}

// Good JPEGs around bad files of every kind are all loaded, every epoch, in
// training and in validation: the bad ones are replaced, none of the good.
func TestLoaderKeepsGoodImagesAroundBadOnes(t *testing.T) {
	dir := t.TempDir()
	good := encodeJPEG(t, image.NewGray(image.Rect(0, 0, 20, 10)))
	bad := map[string][]byte{
		"b_header.jpg":    append([]byte{0xff, 0xd8}, "garbage garbage"...),
		"d_truncated.jpg": good[:len(good)/2],
		"f_zero.jpg":      nil,
		"h_bomb.png":      pngOfSize(100000, 100000),
		"j_noscan.jpg":    good[:200],
		"l_bomb.jpg":      jpegWithSize(t, good, 65500, 65500),
	}
	for _, split := range []string{"train", "val"} {
		for _, class := range []string{"x", "y"} {
			folder := filepath.Join(dir, split, class)
			os.MkdirAll(folder, 0o755)
			for _, name := range []string{"a", "c", "e", "g", "i", "k", "m"} {
				os.WriteFile(filepath.Join(folder, name+"_good.jpg"), good, 0o644)
			}
			for name, data := range bad {
				os.WriteFile(filepath.Join(folder, name), data, 0o644)
			}
		}
	}
	train, val, err := ScanSplits(dir)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, ds *Dataset, seen map[int]int, replaced int) {
		t.Helper()
		nbad := 0
		for i, s := range ds.Samples {
			isBad := !strings.HasSuffix(s.Path, "_good.jpg")
			switch {
			case isBad && seen[i] > 0:
				t.Errorf("%s: bad %s was loaded", what, s.Path)
			case !isBad && seen[i] == 0:
				t.Errorf("%s: good %s was never loaded", what, s.Path)
			}
			if isBad {
				nbad++
			}
		}
		if replaced != nbad {
			t.Errorf("%s: %d replaced, want the %d bad files", what, replaced, nbad)
		}
	}
	files := NewBadFiles(zap.NewNop())
	// One goroutine: every file meets the Decoder that failed on the file before.
	for _, g := range []int{1, 3} {
		for epoch := range 3 {
			shard, _ := Plan{Seed: 5, Epoch: epoch, World: 1, Size: len(train.Samples), Shuffle: true}.Shard(0)
			seen, replaced := loadedIndices(t, train, shard, LoaderConfig{Side: 8, Batch: 4, Augment: true, Seed: 5, Epoch: epoch, Goroutines: g}, files)
			check(fmt.Sprintf("train, %d goroutines, epoch %d", g, epoch), train, seen, replaced)
		}
		// Validation as the trainer runs it: every sample in order, no augmentation.
		all := make([]int, len(val.Samples))
		for i := range all {
			all[i] = i
		}
		seen, replaced := loadedIndices(t, val, all, LoaderConfig{Side: 8, Batch: 5, Goroutines: g}, files)
		check(fmt.Sprintf("val, %d goroutines", g), val, seen, replaced)
	}
	if files.Count() != 2*2*len(bad) {
		t.Errorf("%d bad files recorded, want %d", files.Count(), 2*2*len(bad))
	}
}

// Paths that are not image files are bad files with an error naming them, not
// a hang (a FIFO), an endless read (/dev/zero) or a huge one.
func TestLoaderRefusesOddFiles(t *testing.T) {
	dir := synthDataset(t, SynthConfig{Train: 2, Val: 1, Size: 16, Seed: 4})
	class := filepath.Join(dir, "train", "circle")
	fifo := filepath.Join(class, "fifo.png")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(class, "zero.jpg")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(class, "huge.ppm")
	if err := os.WriteFile(huge, []byte("P6 1 1 255\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, MaxFileBytes+1); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	// A folder named like an image is a folder (torchvision walks it too).
	inner := filepath.Join(class, "folder.jpg")
	os.Mkdir(inner, 0o755)
	png0, _ := os.ReadFile(filepath.Join(class, "circle_0000.png"))
	os.WriteFile(filepath.Join(inner, "inside.png"), png0, 0o644)

	ds, err := Scan(filepath.Join(dir, "train"))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	files := NewBadFiles(zap.New(core))
	shard, _ := Plan{World: 1, Size: len(ds.Samples)}.Shard(0)
	seen, replaced := loadedIndices(t, ds, shard, LoaderConfig{Side: 8, Batch: 3, Goroutines: 2}, files)
	if replaced != 3 || files.Count() != 3 {
		t.Errorf("%d replaced, %d bad files, want 3", replaced, files.Count())
	}
	for i, s := range ds.Samples {
		if s.Path == filepath.Join(inner, "inside.png") && seen[i] == 0 {
			t.Error("the image inside folder.jpg was not loaded")
		}
	}
	for _, e := range logs.All() {
		path, _ := e.ContextMap()["path"].(string)
		msg, _ := e.ContextMap()["error"].(string)
		if !strings.Contains(msg, path) {
			t.Errorf("error %q does not name %s", msg, path)
		}
		want := map[string]string{fifo: "not a regular file", zero: "not a regular file", huge: "sharding.MaxFileBytes"}[path]
		if !strings.Contains(msg, want) {
			t.Errorf("%s: %q, want %q", path, msg, want)
		}
	}
}

// A shard with no readable image is an error from Next, not a wait for ever,
// also when Next is already waiting for the batch whose load fails.
func TestLoaderAllBadFilesIsAnError(t *testing.T) {
	dir := t.TempDir()
	class := filepath.Join(dir, "x")
	os.MkdirAll(class, 0o755)
	good := encodeJPEG(t, image.NewGray(image.Rect(0, 0, 8, 8)))
	for i := range 200 {
		os.WriteFile(filepath.Join(class, fmt.Sprintf("%03d.jpg", i)), good, 0o644)
	}
	ds, err := Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	shard, _ := Plan{World: 1, Size: len(ds.Samples)}.Shard(0)
	// One buffer: the worker loads batch 0, then waits for it to be released.
	l, err := NewLoader(context.Background(), ds, shard, LoaderConfig{Side: 8, Batch: 2, Goroutines: 1, Prefetch: 1}, NewBadFiles(zap.NewNop()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b, err := l.Next()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ds.Samples {
		os.WriteFile(s.Path, []byte("not a jpeg"), 0o644)
	}
	// Batch 1 now fails after trying all 200 files, by when Next waits for it.
	done := make(chan error, 1)
	go func() {
		l.Release(b)
		_, err := l.Next()
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "no readable image") || !strings.Contains(err.Error(), dir) {
			t.Errorf("Next: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Next still waiting 20 s after the shard's last file failed")
	}
}
