package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/progress"
	"github.com/alexring/alexring/sharding"
)

// evaluate is rank 0's end of an epoch (0-based): the accuracy on the val
// split and, when it is the best yet, the model in best.safetensors and/or
// best.pth. The first epoch always writes one, so that every run leaves a
// model.
func (t *Trainer) evaluate(ctx context.Context, epoch int) (acc float64, best bool, err error) {
	start := time.Now()
	if acc, err = t.Validate(ctx); err != nil {
		return 0, false, err
	}
	t.ctl.Telemetry.observeValidation(start, acc)
	if acc <= t.bestAcc && epoch != 0 {
		return acc, false, nil
	}
	t.bestAcc = acc
	meta := alexnet.ModelMeta{Classes: t.train.Classes, Epoch: epoch + 1, ValAccuracy: acc, Normalize: normalization(t.cfg).String()}
	if t.cfg.SavesSafetensors() {
		if err := alexnet.SaveModel(filepath.Join(t.cfg.Out, configs.BestFile), t.params, meta); err != nil {
			return acc, true, err
		}
	}
	if t.cfg.SavesPth() {
		if err := alexnet.SavePthModel(filepath.Join(t.cfg.Out, configs.BestPthFile), t.params); err != nil {
			return acc, true, err
		}
	}
	return acc, true, nil
}

// Validate is the accuracy of the current parameters on the whole val split
// (rank 0 only).
func (t *Trainer) Validate(ctx context.Context) (float64, error) {
	if t.coll.Rank() != 0 {
		return 0, errors.New("worker: only rank 0 validates")
	}
	all := make([]int, len(t.val.Samples))
	for i := range all {
		all[i] = i
	}
	loader, err := sharding.NewLoader(ctx, t.val, all, sharding.LoaderConfig{
		Side: t.params.Spec.Input, Batch: t.cfg.EvalBatch, Normalize: normalization(t.cfg), Goroutines: t.cfg.LoaderGoroutines,
	}, t.badVal)
	if err != nil {
		return 0, err
	}
	defer loader.Close()
	bar := progress.New(t.ctl.Telemetry.Progress, fmt.Sprintf("valid epoch[%d/%d]", t.epoch+1, t.cfg.Epochs), loader.Batches())
	defer bar.Done()
	correct, seen := 0, 0
	for {
		b, err := loader.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("worker: validation: %w", err)
		}
		logits, err := t.backend.Logits(b.Images, b.Count)
		if err != nil {
			loader.Release(b)
			return 0, err
		}
		c, n := score(logits, t.params.Spec.Classes, b, b.Number*t.cfg.EvalBatch)
		correct, seen = correct+c, seen+n
		loader.Release(b)
		bar.Add(1, fmt.Sprintf("acc=%.3f", float64(correct)/float64(max(seen, 1))))
	}
	if seen == 0 {
		return 0, fmt.Errorf("worker: validation: none of the %d images in %s/val could be read", len(t.val.Samples), t.cfg.Data)
	}
	return float64(correct) / float64(seen), nil
}

// score counts the correct predictions of a validation batch whose samples
// should be first, first+1, ...: a slot the loader filled with another image
// (a replacement for an unreadable one, counted in the bad files) is left out,
// so that the accuracy is over the images that were read, each once.
func score(logits []float32, k int, b *sharding.Batch, first int) (correct, seen int) {
	for i := 0; i < b.Count; i++ {
		if b.Indices[i] != first+i {
			continue
		}
		seen++
		if argmax(logits[i*k:(i+1)*k]) == b.Labels[i] {
			correct++
		}
	}
	return correct, seen
}

// argmax is the first index of the largest value, as torch.max returns.
func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}
