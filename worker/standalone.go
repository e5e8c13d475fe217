package worker

import (
	"context"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/sharding"
)

// RunStandalone trains in a world of one, printing the seed's epoch lines to
// out: the same Trainer that rank 0 of a ring runs.
func RunStandalone(ctx context.Context, cfg configs.Job, compute alexnet.Compute, tel Telemetry, log *zap.Logger, out io.Writer) error {
	if cfg.Data == "" {
		// The demo dataset's sizes are known: a batch it cannot take is
		// refused before it is generated.
		classes := len(sharding.SynthClasses)
		spec, err := alexnet.NewSpec(cfg.Variant, classes)
		if err != nil {
			return configs.BadInput(fmt.Errorf("worker: --variant: %w", err))
		}
		demo := cfg
		demo.Data = "(the demo dataset)"
		if _, err := fit(demo, spec, sharding.DemoData.Train*classes, sharding.DemoData.Val*classes, 1, compute, zap.NewNop()); err != nil {
			return err
		}
	}
	return sharding.WithDemoData(cfg.Data, log, func(data string) error {
		cfg.Data = data
		t, err := NewTrainer(cfg, Solo{}, compute, Controller{Telemetry: tel, EpochDone: standaloneEpoch(out, log)}, log)
		if err != nil {
			return err
		}
		defer t.Close()
		start := time.Now()
		if err := t.Run(ctx); err != nil {
			return err
		}
		fmt.Fprintf(out, "Finished Training: best Val Accuracy %.4f in %s; model in %s\n",
			t.bestAcc, time.Since(start).Round(time.Second), cfg.Out)
		return nil
	})
}

// standaloneEpoch is a world of one's reporter: the seed's line for each
// epoch on out, and the epoch's figures in the log.
func standaloneEpoch(out io.Writer, log *zap.Logger) func(context.Context, EpochResult) error {
	return func(_ context.Context, r EpochResult) error {
		fmt.Fprintf(out, "Epoch %d/%d - Train loss: %.4f - Val Accuracy: %.4f\n", r.Epoch, r.Epochs, r.TrainLoss, r.ValAccuracy)
		log.Info("epoch done", zap.Int("epoch", r.Epoch), zap.Float64("train_loss", r.TrainLoss),
			zap.Float64("val_accuracy", r.ValAccuracy), zap.Bool("best", r.Best),
			zap.Float64("img_per_s", float64(r.Images)/r.Duration.Seconds()), zap.Duration("took", r.Duration),
			zap.Int("bad_train_files", r.BadTrainFiles), zap.Int("bad_val_files", r.BadValFiles), zap.Int("skipped_steps", r.Skipped),
			peakRSSField())
		return nil
	}
}
