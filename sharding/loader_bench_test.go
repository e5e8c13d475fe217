package sharding

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkSample is one training sample: decode, RandomResizedCrop, flip,
// normalise, on the flower photos when ../shared is there (bench loader in
// cmd/bench is the figure to quote).
func BenchmarkSample(b *testing.B) {
	root := filepath.Join("..", "..", "shared", "datasets", "flowers", "train")
	if _, err := os.Stat(root); err != nil {
		b.Skip("no flowers dataset beside the repository")
	}
	ds, err := Scan(root)
	if err != nil {
		b.Fatal(err)
	}
	var st sampleState
	dst := make([]float32, 3*224*224)
	cfg := LoaderConfig{Side: 224, Batch: 1, Augment: true, Seed: 1}
	b.ResetTimer()
	for i := range b.N {
		s := ds.Samples[i%len(ds.Samples)]
		if err := st.load(s.Path, i, cfg, dst); err != nil {
			b.Fatal(err)
		}
	}
}
