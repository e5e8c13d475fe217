package worker

import (
	"context"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/internal/progress"
	"github.com/alexring/alexring/sharding"
)

// epochSums add up an epoch's steps, across re-formations of the ring.
type epochSums struct {
	epoch, taken, skipped, images int
	lossSum                       float64
	started                       time.Time // the epoch's first step, before any re-formation
}

// runEpoch is an epoch's bookkeeping around its steps: the plan (checked),
// this rank's shard and its loader, the sums, the telemetry, then rank 0's
// evaluation and every rank's checksum.
func (t *Trainer) runEpoch(ctx context.Context, epoch int) (EpochResult, error) {
	res := EpochResult{Epoch: epoch + 1, Epochs: t.cfg.Epochs}
	t.ringSteps = 0
	if t.acc.started.IsZero() || t.acc.epoch != epoch {
		t.acc = epochSums{epoch: epoch, started: time.Now()}
	}
	plan, err := t.epochPlan(ctx, epoch)
	if err != nil {
		return res, err
	}
	shard, err := plan.Shard(t.coll.Rank())
	if err != nil {
		return res, err
	}
	loader, err := sharding.NewLoader(ctx, t.train, shard, sharding.LoaderConfig{
		Side: t.params.Spec.Input, Batch: t.batch, Augment: t.cfg.Augment, Normalize: normalization(t.cfg),
		Seed: t.cfg.Seed, Epoch: epoch, Goroutines: t.cfg.LoaderGoroutines,
	}, t.badTrain)
	if err != nil {
		return res, err
	}
	defer loader.Close()
	t.ctl.Telemetry.startEpoch(epoch+1, t.coll.Rank(), t.coll.World())
	if err := t.steps(ctx, loader, epoch); err != nil {
		return res, err
	}
	return t.endEpoch(ctx, res)
}

// epochPlan is the epoch's sharding: this rank's derivation, which the
// controller's plan, when it gives one (the coordinator's), must equal.
func (t *Trainer) epochPlan(ctx context.Context, epoch int) (sharding.Plan, error) {
	plan := sharding.Plan{Seed: t.cfg.Seed, Epoch: epoch, World: t.coll.World(), Size: len(t.train.Samples),
		Dataset: t.train.Fingerprint(), Shuffle: true}
	if t.ctl.Plan == nil {
		return plan, nil
	}
	given, err := t.ctl.Plan(ctx, epoch)
	if err != nil {
		return plan, fmt.Errorf("worker: epoch %d plan: %w", epoch+1, err)
	}
	if err := given.Check(t.train); err != nil {
		return plan, fmt.Errorf("worker: epoch %d: %w", epoch+1, err)
	}
	plan.Prior = given.Prior // what earlier rings trained is the coordinator's to know
	if !given.Equal(plan) {
		return plan, fmt.Errorf("worker: epoch %d: the coordinator's plan %+v differs from this rank's %+v (different data or config?)", epoch+1, given, plan)
	}
	return plan, nil
}

// steps takes the epoch's steps, until the loader has no batch left, and adds
// them up: a step counts once the ring averaged its gradient (Position), its
// loss once Adam took it.
func (t *Trainer) steps(ctx context.Context, loader *sharding.Loader, epoch int) error {
	bar := progress.New(t.ctl.Telemetry.Progress, fmt.Sprintf("train epoch[%d/%d]", epoch+1, t.cfg.Epochs), loader.Batches())
	defer bar.Done()
	for {
		rec, err := t.step(ctx, loader, epoch+1, t.ringSteps+1)
		if rec.reduced {
			t.ringSteps++
			t.acc.images += rec.images
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		t.ctl.Telemetry.observeStep(&rec)
		if rec.skipped {
			t.acc.skipped++
			bar.Add(1, "step skipped")
			continue
		}
		t.acc.lossSum += float64(rec.loss)
		t.acc.taken++
		bar.Add(1, fmt.Sprintf("loss=%.3f, %.1f img/s", rec.loss, float64(rec.images)/rec.took().Seconds()))
		if t.cfg.StepLog > 0 && rec.step%t.cfg.StepLog == 0 {
			t.log.Debug("step", zap.Int("epoch", epoch+1), zap.Int("step", rec.step), zap.Int("of", loader.Batches()), zap.Float32("loss", rec.loss))
		}
	}
}

// endEpoch completes the epoch's result: the sums, rank 0's evaluation, the
// unreadable files, the time and the checksum.
func (t *Trainer) endEpoch(ctx context.Context, res EpochResult) (EpochResult, error) {
	// The checksum, the checkpoints and the ring's hand-overs read the host
	// copy of the parameters.
	if err := t.backend.Download(); err != nil {
		return res, fmt.Errorf("worker: epoch %d: parameters from %s: %w", res.Epoch, t.compute.Device, err)
	}
	res.Images, res.Skipped, res.ValImages = t.acc.images, t.acc.skipped, len(t.val.Samples)
	if t.acc.taken > 0 {
		res.TrainLoss = t.acc.lossSum / float64(t.acc.taken)
	}
	if t.coll.Rank() == 0 {
		var err error
		if res.ValAccuracy, res.Best, err = t.evaluate(ctx, res.Epoch-1); err != nil {
			return res, err
		}
	}
	// Counted after the validation, whose unreadable images are rank 0's.
	res.BadTrainFiles, res.BadValFiles = t.badTrain.Count(), t.badVal.Count()
	// The whole epoch, counting the rings before a re-formation and the stall,
	// so that images per second stay true.
	res.Duration = time.Since(t.acc.started)
	res.Checksum = Checksum(t.params.Flat)
	t.ctl.Telemetry.observeEpoch(res, t.acc.started)
	return res, nil
}
