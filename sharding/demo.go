package sharding

import (
	"fmt"
	"os"

	"go.uber.org/zap"
)

// DemoData is the built-in default dataset: synthetic shapes, small enough to
// train the tiny variant in a minute on two cores.
var DemoData = SynthConfig{Train: 400, Val: 40, Size: 64, Seed: 1}

// WithDemoData runs fn with data, or when data is empty with the demo dataset
// generated into a temporary folder that is removed when fn returns: what a
// command given no --data trains on.
func WithDemoData(data string, log *zap.Logger, fn func(data string) error) error {
	if data != "" {
		return fn(data)
	}
	dir, err := os.MkdirTemp("", "alexring-demo-data-")
	if err != nil {
		return fmt.Errorf("demo data: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := Synthesize(dir, DemoData); err != nil {
		return err
	}
	log.Info("no --data given: generated the synthetic demo dataset", zap.String("dir", dir),
		zap.Int("train_per_class", DemoData.Train), zap.Int("val_per_class", DemoData.Val))
	return fn(dir)
}
