package worker

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/sharding"
)

// DemoData is the built-in default dataset: synthetic shapes, small enough to
// train the tiny variant in a minute on two cores.
var DemoData = sharding.SynthConfig{Train: 400, Val: 40, Size: 64, Seed: 1}

// WithDemoData runs fn with cfg.Data set: the given folder, or when none is
// given, a synthetic dataset generated into a temporary folder removed after.
func WithDemoData(cfg Config, log *zap.Logger, fn func(Config) error) error {
	if cfg.Data != "" {
		return fn(cfg)
	}
	dir, err := os.MkdirTemp("", "alexring-demo-data-")
	if err != nil {
		return fmt.Errorf("worker: demo data: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := sharding.Synthesize(dir, DemoData); err != nil {
		return err
	}
	log.Info("no --data given: generated the synthetic demo dataset", zap.String("dir", dir),
		zap.Int("train_per_class", DemoData.Train), zap.Int("val_per_class", DemoData.Val))
	cfg.Data = dir
	return fn(cfg)
}

// RunStandalone trains in a world of one, printing the seed's epoch lines to
// out: the same Trainer that rank 0 of a ring runs.
func RunStandalone(ctx context.Context, cfg Config, compute alexnet.Compute, tel Telemetry, log *zap.Logger, out io.Writer) error {
	if cfg.Data == "" {
		// The demo dataset's sizes are known: a batch it cannot take is
		// refused before it is generated.
		classes := len(sharding.SynthClasses)
		spec, err := alexnet.NewSpec(cfg.Variant, classes)
		if err != nil {
			return BadInput(fmt.Errorf("worker: --variant: %w", err))
		}
		demo := cfg
		demo.Data = "(the demo dataset)"
		if _, err := fit(demo, spec, DemoData.Train*classes, DemoData.Val*classes, 1, compute, zap.NewNop()); err != nil {
			return err
		}
	}
	return WithDemoData(cfg, log, func(cfg Config) error {
		t, err := NewTrainer(cfg, Solo{}, compute, log)
		if err != nil {
			return err
		}
		defer t.Close()
		t.Telemetry = tel
		start := time.Now()
		t.OnEpoch = func(r EpochResult) error {
			fmt.Fprintf(out, "Epoch %d/%d - Train loss: %.4f - Val Accuracy: %.4f\n", r.Epoch, r.Epochs, r.TrainLoss, r.ValAccuracy)
			log.Info("epoch done", zap.Int("epoch", r.Epoch), zap.Float64("train_loss", r.TrainLoss),
				zap.Float64("val_accuracy", r.ValAccuracy), zap.Bool("best", r.Best),
				zap.Float64("img_per_s", float64(r.Images)/r.Duration.Seconds()), zap.Duration("took", r.Duration),
				zap.Int("bad_train_files", r.BadTrainFiles), zap.Int("bad_val_files", r.BadValFiles), zap.Int("skipped_steps", r.Skipped),
				peakRSSField())
			return nil
		}
		if err := t.Run(ctx); err != nil {
			return err
		}
		fmt.Fprintf(out, "Finished Training: best Val Accuracy %.4f in %s; model in %s\n",
			t.bestAcc, time.Since(start).Round(time.Second), cfg.Out)
		return nil
	})
}
