package worker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/internal/atomicfile"
	"github.com/alexring/alexring/internal/progress"
	"github.com/alexring/alexring/sharding"
)

// Collective is what a rank needs from its peers: averaging the flat gradient
// and taking rank 0's parameters. A world of one needs nothing (Solo); the
// gRPC ring of the allreduce package is the real one.
type Collective interface {
	Rank() int
	World() int
	// AllReduceAvg replaces v, on every rank, by the element-wise mean of all
	// ranks' v, bit-identical on every rank.
	AllReduceAvg(ctx context.Context, v []float32) error
	// StartAllReduceAvg begins AllReduceAvg of v and returns at once; wait
	// returns its result, and v must not be touched until then. Collectives
	// run in the order started, which is the same on every rank.
	StartAllReduceAvg(ctx context.Context, v []float32) (wait func() error)
	// Broadcast replaces v on every rank by root's v.
	Broadcast(ctx context.Context, v []float32, root int) error
}

// Solo is the collective of a world of one.
type Solo struct{}

func (Solo) Rank() int                                     { return 0 }
func (Solo) World() int                                    { return 1 }
func (Solo) AllReduceAvg(context.Context, []float32) error { return nil }
func (Solo) StartAllReduceAvg(context.Context, []float32) func() error {
	return func() error { return nil }
}
func (Solo) Broadcast(context.Context, []float32, int) error { return nil }

// EpochResult is what one epoch did, as rank 0 saw it.
type EpochResult struct {
	Epoch, Epochs int     // 1-based
	TrainLoss     float64 // mean of the batch losses (the seed's running_loss / len(loader))
	ValAccuracy   float64 // correct / val samples (rank 0 only)
	Best          bool    // this epoch's model became best.safetensors
	Images        int     // training images this rank saw
	Duration      time.Duration
	// BadTrainFiles and BadValFiles are the distinct unreadable images this
	// rank has met so far in each split (replaced by others of the shard).
	BadTrainFiles, BadValFiles int
	Checksum                   uint64 // CRC-64 of the parameters after the epoch: equal on every rank
	Skipped                    int    // optimiser steps skipped for a non-finite gradient
}

func allFinite(v []float32) bool {
	for _, x := range v {
		// x-x is 0 for every finite x, NaN for NaN and the infinities.
		if x-x != 0 {
			return false
		}
	}
	return true
}

// culprits are the ranks whose flag survived the averaging.
func culprits(flags []float32) []int {
	var bad []int
	for r, f := range flags {
		if f != 0 {
			bad = append(bad, r)
		}
	}
	return bad
}

// epochSums add up an epoch's steps, across re-formations of the ring.
type epochSums struct {
	epoch, taken, skipped, images int
	lossSum                       float64
	started                       time.Time // the epoch's first step, before any re-formation
}

// Trainer trains one rank: its shard of each epoch, forward/backward, the
// all-reduce, Adam; rank 0 also validates and writes the checkpoints.
type Trainer struct {
	cfg   Config
	log   *zap.Logger
	coll  Collective
	train *sharding.Dataset
	val   *sharding.Dataset

	params  *alexnet.Params
	adam    *alexnet.Adam
	pcg     *rand.PCG // dropout masks
	rng     *rand.Rand
	compute alexnet.Compute
	backend alexnet.Backend
	// ringVec is what the ring averages each step: one NaN flag per rank,
	// then the gradient (so that one all-reduce also tells every rank who
	// produced a NaN), in a vector from the backend with room for flagRoom
	// flags before the gradient; a world of one keeps its gradient in the
	// backend instead.
	ringVec  []float32
	flagRoom int
	// trainFrom is where the trained parameters start (cfg.Freeze): the
	// gradient, and so the ring's vector, is that of Flat[trainFrom:].
	trainFrom int
	// The unreadable images of each split, counted apart: rank 0 meets the
	// validation's after the epoch's training.
	badTrain, badVal *sharding.BadFiles
	swept            bool // the output folder's stale temporary files are gone

	epoch   int // epochs completed
	bestAcc float64
	batch   int // this rank's batch (the ring's plan may change it)
	// ringSteps are the steps this ring took in the epoch under way (acc's); a
	// re-formation resumes from the survivors' furthest Position.
	ringSteps int
	acc       epochSums

	// OnEpoch, when set, is called after every epoch (after validation on rank
	// 0); an error stops the training.
	OnEpoch func(EpochResult) error
	// Telemetry shows the training's progress (progress bars, metrics, timeline).
	Telemetry Telemetry
	// EpochPlan, when set, gives each epoch's sharding (the coordinator's);
	// the trainer checks it against its own derivation. Unset, it derives it.
	EpochPlan func(ctx context.Context, epoch int) (sharding.Plan, error)
}

// NewTrainer scans the data, builds the model (or restores cfg.Resume) and its
// backend from compute. On rank 0 it writes class_indices.json into cfg.Out.
func NewTrainer(cfg Config, coll Collective, compute alexnet.Compute, log *zap.Logger) (*Trainer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if err := cfg.CheckWorld(coll.World()); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	train, val, err := sharding.ScanSplits(cfg.Data)
	if err != nil {
		return nil, BadInput(fmt.Errorf("worker: --data: %w", err))
	}
	spec, err := alexnet.NewSpec(cfg.Variant, len(train.Classes))
	if err != nil {
		return nil, BadInput(err)
	}
	if cfg, err = fit(cfg, spec, len(train.Samples), len(val.Samples), coll.World(), compute, log); err != nil {
		return nil, err
	}
	t := &Trainer{cfg: cfg, log: log, coll: coll, train: train, val: val, badTrain: sharding.NewBadFiles(log), badVal: sharding.NewBadFiles(log),
		batch: cfg.WorkerBatch(coll.World()), compute: compute}
	freeze, err := alexnet.ParseFreeze(cfg.Freeze)
	if err != nil {
		return nil, BadInput(fmt.Errorf("worker: --freeze: %w", err))
	}
	if cfg.Resume != "" {
		if err := t.restore(spec, freeze); err != nil {
			return nil, err
		}
		if cfg.Init != "" { // a fine-tuning job that resumes goes on from its state
			log.Info("--resume wins over --init: the parameters are the state's", zap.String("resume", cfg.Resume), zap.String("init", cfg.Init))
		}
	} else {
		if err := t.initParams(spec, freeze); err != nil {
			return nil, err
		}
		if t.adam, err = alexnet.NewAdam(cfg.Adam(), len(t.params.Flat)); err != nil {
			return nil, err
		}
		t.pcg = rand.NewPCG(cfg.Seed, uint64(coll.Rank())+1)
	}
	t.rng = rand.New(t.pcg)
	if t.trainFrom, err = spec.TrainFrom(freeze); err != nil {
		return nil, BadInput(fmt.Errorf("worker: --freeze: %w", err))
	}
	if t.backend, err = compute.New(alexnet.BackendConfig{Params: t.params, Adam: t.adam, Batch: t.batch, EvalBatch: cfg.EvalBatch, Dropout: cfg.Dropout, Freeze: freeze}); err != nil {
		return nil, fmt.Errorf("worker: %s: %w", compute.Device, err)
	}
	if err := t.Reconfigure(coll, t.batch, t.epoch); err != nil {
		t.backend.Close()
		return nil, err
	}
	if alexnet.BLASCoreNote != "" { // why OpenBLAS runs the core compute's BLAS names
		log = log.With(zap.String("blas_core_note", alexnet.BLASCoreNote))
	}
	log.Info("model ready",
		zap.String("variant", spec.Variant), zap.Int("parameters", len(t.params.Flat)),
		zap.Int("classes", spec.Classes), zap.Int("train_images", len(train.Samples)), zap.Int("val_images", len(val.Samples)),
		zap.Int("rank", coll.Rank()), zap.Int("world", coll.World()), zap.Int("batch_per_rank", t.batch),
		zap.String("compute", t.backend.Describe()), zap.Int("start_epoch", t.epoch))
	if coll.Rank() == 0 && cfg.SavesPth() && cfg.Normalization() == sharding.NormalizeImageNet {
		// best.safetensors names its normalisation; a .pth holds tensors only.
		log.Info("best.pth carries no normalize setting: give predict --normalize imagenet with it", zap.String("file", filepath.Join(cfg.Out, BestPthFile)))
	}
	return t, nil
}

// The files rank 0 writes into the output folder.
const (
	BestFile         = "best.safetensors"
	BestPthFile      = "best.pth" // with --save-format pth or both
	StateFile        = "state.safetensors"
	ClassIndicesFile = "class_indices.json"
)

// fit refuses batches that the data cannot fill or this machine's memory
// cannot hold (bad input: before anything is allocated), and clamps the
// evaluation batch to the validation set. The clamp changes no result (each
// image's logits are its own) and only saves the memory of padding rows: an
// --eval-batch of 10^8 otherwise allocated 10^8 images for 40.
func fit(cfg Config, spec alexnet.Spec, trainImages, valImages, world int, compute alexnet.Compute, log *zap.Logger) (Config, error) {
	batch := cfg.WorkerBatch(world)
	if world == 1 {
		if err := cfg.CheckData(trainImages, 1); err != nil {
			return cfg, fmt.Errorf("worker: %w", err)
		}
	} else if batch > trainImages {
		return cfg, BadInput(fmt.Errorf("worker: a batch of %d per rank is larger than the %d training images in %s", batch, trainImages, filepath.Join(cfg.Data, "train")))
	}
	if cfg.EvalBatch > valImages {
		log.Info("--eval-batch is larger than the validation set; using the set's size", zap.Int("eval_batch", cfg.EvalBatch), zap.Int("val_images", valImages))
		cfg.EvalBatch = valImages
	}
	if err := cfg.CheckMemory(spec, batch, compute.Device == "cpu", 1); err != nil {
		return cfg, fmt.Errorf("worker: %w", err)
	}
	return cfg, nil
}

// initParams draws the parameters from the seed or, with cfg.Init, takes
// those of the file by name (on cfg.initRank, the rank SyncState gives the
// others its parameters from, so the file is read once and every rank
// starts from the same bits). With the features frozen, a file that does not hold them all is
// refused: the convolutions would stay random.
func (t *Trainer) initParams(spec alexnet.Spec, freeze alexnet.Freeze) error {
	t.params = alexnet.NewParams(spec)
	if freeze == alexnet.FreezeFeatures && t.cfg.Init == "" {
		t.log.Warn("--freeze features without --init: the classifier trains on convolutions that stay as the seed drew them")
	}
	if t.cfg.Init == "" || t.coll.Rank() != t.cfg.initRank {
		t.params.Init(t.cfg.Seed)
		if t.cfg.Init != "" {
			t.log.Info(fmt.Sprintf("the initial parameters come from rank %d's --init file", t.cfg.initRank), zap.String("init", t.cfg.Init))
		}
		return nil
	}
	rep, err := t.params.InitFrom(t.cfg.Init, t.cfg.Seed)
	if err != nil {
		return BadInput(fmt.Errorf("worker: --init (rank %d): %w", t.cfg.initRank, err))
	}
	if freeze == alexnet.FreezeFeatures {
		frozen := map[string]bool{}
		for _, tn := range t.params.Layout {
			frozen[tn.Name] = tn.Offset < spec.ClassifierOffset()
		}
		for i, name := range rep.ReinitNames() {
			if frozen[name] {
				return BadInput(fmt.Errorf("worker: --freeze features keeps the convolutions as --init %s gives them, but it does not hold them (%s): is it the state_dict of the %s variant (--variant)?",
					t.cfg.Init, rep.Reinit[i], spec.Variant))
			}
		}
	}
	t.log.Info("initialised from --init", zap.String("init", t.cfg.Init), zap.Int("loaded", len(rep.Loaded)),
		zap.Strings("reinitialised", rep.Reinit), zap.Strings("ignored", rep.Ignored), zap.Uint64("seed", t.cfg.Seed))
	return nil
}

// restore loads cfg.Resume; what is wrong with it is bad input.
func (t *Trainer) restore(spec alexnet.Spec, freeze alexnet.Freeze) error {
	st, err := alexnet.LoadTrainState(t.cfg.Resume)
	if err != nil {
		return BadInput(fmt.Errorf("worker: --resume: %w", err))
	}
	if st.Params.Spec != spec {
		return BadInput(fmt.Errorf("worker: --resume %s holds a %s model with %d classes; the data and config make a %s model with %d classes",
			t.cfg.Resume, st.Params.Spec.Variant, st.Params.Spec.Classes, spec.Variant, spec.Classes))
	}
	// Going on with other inputs or other trained parameters would not be
	// the run the state is from.
	if norm := t.cfg.Normalization().String(); st.Normalize != norm {
		return BadInput(fmt.Errorf("worker: --resume %s trained with normalize %q; --normalize is %q", t.cfg.Resume, st.Normalize, norm))
	}
	if st.Freeze != freeze {
		return BadInput(fmt.Errorf("worker: --resume %s trained with freeze %q; --freeze is %q", t.cfg.Resume, st.Freeze, freeze))
	}
	t.pcg = &rand.PCG{}
	if err := t.pcg.UnmarshalBinary(st.RNGState); err != nil {
		return BadInput(fmt.Errorf("worker: --resume %s: dropout RNG state: %w", t.cfg.Resume, err))
	}
	t.params, t.adam, t.epoch, t.bestAcc = st.Params, st.Adam, st.Epoch, st.BestAcc
	// The learning rate may be changed on resume; the moments carry over.
	t.adam.Config = t.cfg.Adam()
	return nil
}

// Reconfigure puts the trainer in a (new) ring: its collective, this rank's
// batch, and the epoch to go on from. It builds what the rank needs: the
// training graph for the batch, and on rank 0 the evaluation graph and the
// output folder.
func (t *Trainer) Reconfigure(coll Collective, batch, epoch int) error {
	if batch < 1 {
		return fmt.Errorf("worker: batch per rank %d", batch)
	}
	t.coll, t.epoch = coll, epoch
	if world := coll.World(); world > 1 && world > t.flagRoom {
		t.flagRoom = max(world, 16) // room to grow: a late joiner then costs no new vector
		var err error
		if t.ringVec, err = t.backend.HostVector(t.flagRoom + len(t.params.Flat) - t.trainFrom); err != nil {
			return fmt.Errorf("worker: the gradient's host vector: %w", err)
		}
	}
	if err := t.backend.SetBatch(batch); err != nil {
		return err
	}
	t.batch = batch
	if coll.Rank() == 0 {
		if err := os.MkdirAll(t.cfg.Out, 0o755); err != nil {
			return BadInput(fmt.Errorf("worker: output folder (--out): %w", err))
		}
		t.sweep()
		if err := sharding.WriteClassIndices(filepath.Join(t.cfg.Out, ClassIndicesFile), t.train.Classes); err != nil {
			return err
		}
	}
	return nil
}

// OutputFiles are the files rank 0 writes into the output folder.
var OutputFiles = []string{BestFile, BestPthFile, StateFile, ClassIndicesFile}

// sweep removes, once, the temporary files that a rank 0 killed while
// writing left in the output folder. Another process writing one now (a
// second job sharing --out) holds its lock, so it stays.
func (t *Trainer) sweep() {
	if t.swept {
		return
	}
	t.swept = true
	removed, err := atomicfile.Sweep(t.cfg.Out, OutputFiles...)
	if len(removed) > 0 {
		t.log.Info("removed the temporary files of an interrupted write", zap.Strings("files", removed))
	}
	if err != nil {
		t.log.Warn("looking for stale temporary files", zap.String("out", t.cfg.Out), zap.Error(err))
	}
}

// SyncState gives every rank root's parameters, Adam state and best accuracy,
// bit for bit: at the start (where rank 0's initialisation wins whatever the
// seeds) and after a re-formation (where the survivor furthest along wins).
func (t *Trainer) SyncState(ctx context.Context, root int) error {
	if t.coll.World() == 1 {
		return nil
	}
	if err := t.backend.Download(); err != nil {
		return fmt.Errorf("worker: state from %s: %w", t.compute.Device, err)
	}
	// The step and the best accuracy travel as float32 bit patterns, which a
	// broadcast copies unchanged.
	best := math.Float64bits(t.bestAcc)
	header := []float32{
		math.Float32frombits(uint32(t.adam.Step)), math.Float32frombits(uint32(t.adam.Step >> 32)),
		math.Float32frombits(uint32(best)), math.Float32frombits(uint32(best >> 32)),
	}
	for _, v := range [][]float32{header, t.params.Flat, t.adam.M, t.adam.V} {
		if err := t.coll.Broadcast(ctx, v, root); err != nil {
			return fmt.Errorf("worker: parameters and Adam state from rank %d: %w", root, err)
		}
	}
	t.adam.Step = int64(math.Float32bits(header[0])) | int64(math.Float32bits(header[1]))<<32
	t.bestAcc = math.Float64frombits(uint64(math.Float32bits(header[2])) | uint64(math.Float32bits(header[3]))<<32)
	if err := t.backend.Upload(); err != nil {
		return fmt.Errorf("worker: state to %s: %w", t.compute.Device, err)
	}
	return nil
}

// Position is the epoch under way (0-based) and the steps this ring has taken
// in it; before any epoch ran, the epoch about to start.
func (t *Trainer) Position() (epoch, steps int) {
	if t.acc.started.IsZero() {
		return t.epoch, 0
	}
	return t.acc.epoch, t.ringSteps
}

// Params is the rank's parameter vector (shared, not copied) as of the last
// epoch's end or state synchronisation (a GPU's are newer during an epoch).
func (t *Trainer) Params() *alexnet.Params { return t.params }

// Close releases the backend.
func (t *Trainer) Close() {
	if err := t.backend.Close(); err != nil {
		t.log.Warn("closing the backend", zap.String("device", t.compute.Device), zap.Error(err))
	}
}

// Run trains the remaining epochs. The ranks must hold the same state first
// (SyncState).
func (t *Trainer) Run(ctx context.Context) error {
	for t.epoch < t.cfg.Epochs {
		res, err := t.runEpoch(ctx, t.epoch)
		if err != nil {
			return err
		}
		t.epoch++
		if t.coll.Rank() == 0 {
			if err := t.saveState(); err != nil {
				return err
			}
		}
		if t.OnEpoch != nil {
			if err := t.OnEpoch(res); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *Trainer) runEpoch(ctx context.Context, epoch int) (EpochResult, error) {
	start := time.Now()
	res := EpochResult{Epoch: epoch + 1, Epochs: t.cfg.Epochs}
	plan := sharding.Plan{Seed: t.cfg.Seed, Epoch: epoch, World: t.coll.World(), Size: len(t.train.Samples),
		Dataset: t.train.Fingerprint(), Shuffle: true}
	t.ringSteps = 0
	if t.acc.started.IsZero() || t.acc.epoch != epoch {
		t.acc = epochSums{epoch: epoch, started: start}
	}
	if t.EpochPlan != nil {
		given, err := t.EpochPlan(ctx, epoch)
		if err != nil {
			return res, fmt.Errorf("worker: epoch %d plan: %w", epoch+1, err)
		}
		if err := given.Check(t.train); err != nil {
			return res, fmt.Errorf("worker: epoch %d: %w", epoch+1, err)
		}
		plan.Prior = given.Prior // what earlier rings trained is the coordinator's to know
		if !given.Equal(plan) {
			return res, fmt.Errorf("worker: epoch %d: the coordinator's plan %+v differs from this rank's %+v (different data or config?)", epoch+1, given, plan)
		}
	}
	shard, err := plan.Shard(t.coll.Rank())
	if err != nil {
		return res, err
	}
	loader, err := sharding.NewLoader(ctx, t.train, shard, sharding.LoaderConfig{
		Side: t.params.Spec.Input, Batch: t.batch, Augment: t.cfg.Augment, Normalize: t.cfg.Normalization(),
		Seed: t.cfg.Seed, Epoch: epoch, Goroutines: t.cfg.LoaderGoroutines,
	}, t.badTrain)
	if err != nil {
		return res, err
	}
	defer loader.Close()
	t.Telemetry.startEpoch(epoch+1, t.coll.Rank(), t.coll.World())
	bar := progress.New(t.Telemetry.Progress, fmt.Sprintf("train epoch[%d/%d]", epoch+1, t.cfg.Epochs), loader.Batches())
	defer bar.Done()
	steps := 0
	for {
		world := t.coll.World()
		// A world of one keeps its gradient in the backend (nil): nothing to
		// average, nothing to copy to the host.
		var vec, flags, grad []float32
		if world > 1 {
			vec = t.ringVec[t.flagRoom-world:]
			flags, grad = vec[:world], vec[world:]
		}
		rec := stepRecord{epoch: epoch + 1, step: steps + 1, world: world, allreduceBytes: 4 * len(vec), start: time.Now()}
		b, err := loader.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, fmt.Errorf("worker: epoch %d: %w", epoch+1, err)
		}
		rec.phase(PhaseDataWait, rec.start, time.Since(rec.start))
		// With overlap the classifier's gradients, final early in the
		// backward pass, are all-reduced while the convolutions' backward
		// runs, and the rest with the flags after it; otherwise all of it
		// after. With the features frozen the gradient is the classifier's
		// alone: nothing runs after it to overlap with.
		from := len(grad)
		var classifierReady func()
		var classifierWait func() error
		if world > 1 && t.trainFrom == 0 && (t.cfg.Ring.Overlap || t.compute.FreesCPU) {
			from = t.params.Spec.ClassifierOffset()
			classifierReady = func() { classifierWait = t.coll.StartAllReduceAvg(ctx, grad[from:]) }
		}
		st, err := t.backend.Gradient(b.Images, b.Labels, b.Count, t.rng, grad, classifierReady)
		rec.phase(PhaseForward, rec.start.Add(rec.phases[0].took), st.Forward)
		rec.phase(PhaseBackward, rec.start.Add(rec.phases[0].took+st.Forward), st.Backward)
		rec.images, rec.loss = b.Count, st.Loss
		loader.Release(b)
		if err != nil {
			if classifierWait != nil {
				classifierWait() // it reads and writes grad: let it end first
			}
			return res, fmt.Errorf("worker: epoch %d step %d: %w", epoch+1, steps+1, err)
		}
		if !st.Finite {
			t.log.Warn("non-finite loss or gradient", zap.Int("epoch", epoch+1), zap.Int("step", steps+1), zap.Int("rank", t.coll.Rank()), zap.Float32("loss", st.Loss))
		}
		reduceStart := time.Now()
		bad, err := t.reduce(ctx, vec, flags, from, st.Finite, classifierWait)
		if err != nil {
			return res, fmt.Errorf("worker: epoch %d step %d: gradient all-reduce: %w", epoch+1, steps+1, err)
		}
		rec.phase(PhaseAllReduce, reduceStart, time.Since(reduceStart))
		steps++
		t.ringSteps = steps
		t.acc.images += rec.images
		if len(bad) > 0 || !allFinite(grad) {
			if !t.cfg.SkipNonFinite {
				return res, fmt.Errorf("worker: epoch %d step %d: non-finite loss or gradient from rank %v; stopped before the optimiser step (skip_nonfinite: true skips such steps)", epoch+1, steps, bad)
			}
			t.acc.skipped++
			rec.skipped = true
			t.Telemetry.observeStep(&rec)
			bar.Add(1, "step skipped")
			continue
		}
		optStart := time.Now()
		if err := t.backend.Update(grad); err != nil {
			return res, fmt.Errorf("worker: epoch %d step %d: Adam on %s: %w", epoch+1, steps, t.compute.Device, err)
		}
		rec.phase(PhaseOptimizer, optStart, time.Since(optStart))
		t.Telemetry.observeStep(&rec)
		t.acc.lossSum += float64(st.Loss)
		t.acc.taken++
		bar.Add(1, fmt.Sprintf("loss=%.3f, %.1f img/s", st.Loss, float64(rec.images)/rec.took().Seconds()))
		if t.cfg.StepLog > 0 && steps%t.cfg.StepLog == 0 {
			t.log.Debug("step", zap.Int("epoch", epoch+1), zap.Int("step", steps), zap.Int("of", loader.Batches()), zap.Float32("loss", st.Loss))
		}
	}
	bar.Done()
	// The checksum, the checkpoints and the ring's hand-overs read the host
	// copy of the parameters.
	if err := t.backend.Download(); err != nil {
		return res, fmt.Errorf("worker: epoch %d: parameters from %s: %w", epoch+1, t.compute.Device, err)
	}
	res.Images, res.Skipped = t.acc.images, t.acc.skipped
	if t.acc.taken > 0 {
		res.TrainLoss = t.acc.lossSum / float64(t.acc.taken)
	}
	if t.coll.Rank() == 0 {
		valStart := time.Now()
		acc, err := t.Validate(ctx)
		if err != nil {
			return res, err
		}
		t.Telemetry.observeValidation(valStart, acc)
		res.ValAccuracy = acc
		// The first epoch always writes one, so that every run leaves a model.
		if acc > t.bestAcc || epoch == 0 {
			t.bestAcc = acc
			res.Best = true
			meta := alexnet.ModelMeta{Classes: t.train.Classes, Epoch: epoch + 1, ValAccuracy: acc, Normalize: t.cfg.Normalization().String()}
			if t.cfg.SavesSafetensors() {
				if err := alexnet.SaveModel(filepath.Join(t.cfg.Out, BestFile), t.params, meta); err != nil {
					return res, err
				}
			}
			if t.cfg.SavesPth() {
				if err := alexnet.SavePthModel(filepath.Join(t.cfg.Out, BestPthFile), t.params); err != nil {
					return res, err
				}
			}
		}
	}
	// Counted after the validation, whose unreadable images are rank 0's.
	res.BadTrainFiles, res.BadValFiles = t.badTrain.Count(), t.badVal.Count()
	// The whole epoch, counting the rings before a re-formation and the stall,
	// so that images per second stay true.
	res.Duration = time.Since(t.acc.started)
	res.Checksum = Checksum(t.params.Flat)
	t.Telemetry.observeEpoch(res, t.acc.started)
	return res, nil
}

// reduce averages vec, the flags and the gradient, over the ring (the part
// from the classifier on already under way when classifierWait is set) and
// returns the ranks whose gradient was not finite. A world of one averages
// nothing.
func (t *Trainer) reduce(ctx context.Context, vec, flags []float32, from int, finite bool, classifierWait func() error) (bad []int, err error) {
	if vec == nil {
		if !finite {
			bad = []int{t.coll.Rank()}
		}
		return bad, nil
	}
	clear(flags)
	if !finite {
		flags[t.coll.Rank()] = 1
	}
	err = t.coll.AllReduceAvg(ctx, vec[:len(flags)+from])
	if classifierWait != nil {
		if werr := classifierWait(); err == nil {
			err = werr
		}
	}
	return culprits(flags), err
}

var crcTable = crc64.MakeTable(crc64.ECMA)

// Checksum is a CRC-64 of a parameter vector's bits: ranks compare it after
// every epoch, since bit-identical replicas are the point of the ring.
func Checksum(v []float32) uint64 {
	b := make([]byte, 4096)
	h := crc64.New(crcTable)
	for len(v) > 0 {
		n := min(len(v), len(b)/4)
		for i, x := range v[:n] {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		}
		h.Write(b[:4*n])
		v = v[n:]
	}
	return h.Sum64()
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
		Side: t.params.Spec.Input, Batch: t.cfg.EvalBatch, Normalize: t.cfg.Normalization(), Goroutines: t.cfg.LoaderGoroutines,
	}, t.badVal)
	if err != nil {
		return 0, err
	}
	defer loader.Close()
	bar := progress.New(t.Telemetry.Progress, fmt.Sprintf("valid epoch[%d/%d]", t.epoch+1, t.cfg.Epochs), loader.Batches())
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

func (t *Trainer) saveState() error {
	rs, err := t.pcg.MarshalBinary()
	if err != nil {
		return err
	}
	freeze, _ := alexnet.ParseFreeze(t.cfg.Freeze) // checked by NewTrainer
	return alexnet.SaveTrainState(filepath.Join(t.cfg.Out, StateFile), &alexnet.TrainState{
		Params: t.params, Adam: t.adam, Epoch: t.epoch, BestAcc: t.bestAcc,
		Seed: t.cfg.Seed, RNGState: rs, Classes: t.train.Classes,
		Normalize: t.cfg.Normalization().String(), Freeze: freeze,
	})
}
