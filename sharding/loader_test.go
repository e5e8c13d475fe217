package sharding

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
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
	before := runtime.NumGoroutine()
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
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Close, %d before", n, before)
	}
}
