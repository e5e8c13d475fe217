package worker

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc64"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/atomicfile"
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
	ValImages     int     // the val split's images, which rank 0 validates before it reports
	Best          bool    // this epoch's model became best.safetensors
	Images        int     // training images this rank saw
	Duration      time.Duration
	// BadTrainFiles and BadValFiles are the distinct unreadable images this
	// rank has met so far in each split (replaced by others of the shard).
	BadTrainFiles, BadValFiles int
	Checksum                   uint64 // CRC-64 of the parameters after the epoch: equal on every rank
	Skipped                    int    // optimiser steps skipped for a non-finite gradient
}

// Trainer trains one rank: its shard of each epoch, forward/backward, the
// all-reduce, Adam; rank 0 also validates and writes the checkpoints.
type Trainer struct {
	cfg configs.Job
	// initRank is the rank that reads cfg.Init: the one whose state SyncState
	// gives the others (0 but for a ring that replaced one that never opened).
	initRank int
	log      *zap.Logger
	coll     Collective
	train    *sharding.Dataset
	val      *sharding.Dataset

	params  *alexnet.Params
	adam    *alexnet.Adam
	pcg     *rand.PCG // dropout masks
	rng     *rand.Rand
	compute alexnet.Compute
	backend alexnet.Backend
	// ring is what the ring averages each step: the ranks' NaN flags, then
	// the gradient; a world of one keeps its gradient in the backend instead.
	ring ringVector
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

	ctl Controller // the plan source, the reporter, the telemetry
}

// Controller is what a trainer answers to, given to NewTrainer: where each
// epoch's plan comes from, who hears of each epoch's end, and what shows the
// progress. The zero value derives every plan and tells no one; standalone's
// prints the seed's epoch lines, a ring's asks the coordinator for each plan
// and reports each epoch to it.
type Controller struct {
	// Plan, when set, gives each epoch's sharding (the coordinator's); the
	// trainer checks it against its own derivation. Unset, it derives it.
	Plan func(ctx context.Context, epoch int) (sharding.Plan, error)
	// EpochDone, when set, is called after every epoch (after validation on
	// rank 0); an error stops the training.
	EpochDone func(ctx context.Context, r EpochResult) error
	// Telemetry shows the training's progress (progress bars, metrics, timeline).
	Telemetry Telemetry
}

// NewTrainer scans the data, builds the model (or restores cfg.Resume) and its
// backend from compute. On rank 0 it writes class_indices.json into cfg.Out.
func NewTrainer(cfg configs.Job, coll Collective, compute alexnet.Compute, ctl Controller, log *zap.Logger) (*Trainer, error) {
	return newTrainer(cfg, 0, coll, compute, ctl, log)
}

// newTrainer is NewTrainer on a ring whose rank initRank reads cfg.Init.
func newTrainer(cfg configs.Job, initRank int, coll Collective, compute alexnet.Compute, ctl Controller, log *zap.Logger) (*Trainer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if err := cfg.CheckWorld(coll.World()); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	train, val, err := sharding.ScanSplits(cfg.Data)
	if err != nil {
		return nil, configs.BadInput(fmt.Errorf("worker: --data: %w", err))
	}
	spec, err := alexnet.NewSpec(cfg.Variant, len(train.Classes))
	if err != nil {
		return nil, configs.BadInput(err)
	}
	if cfg, err = fit(cfg, spec, len(train.Samples), len(val.Samples), coll.World(), compute, log); err != nil {
		return nil, err
	}
	t := &Trainer{cfg: cfg, initRank: initRank, ctl: ctl, log: log, coll: coll, train: train, val: val, badTrain: sharding.NewBadFiles(log), badVal: sharding.NewBadFiles(log),
		batch: cfg.WorkerBatch(coll.World()), compute: compute}
	freeze, err := alexnet.ParseFreeze(cfg.Freeze)
	if err != nil {
		return nil, configs.BadInput(fmt.Errorf("worker: --freeze: %w", err))
	}
	if err := t.startState(spec, freeze); err != nil {
		return nil, err
	}
	if t.trainFrom, err = spec.TrainFrom(freeze); err != nil {
		return nil, configs.BadInput(fmt.Errorf("worker: --freeze: %w", err))
	}
	if t.backend, err = compute.New(alexnet.BackendConfig{Params: t.params, Adam: t.adam, Batch: t.batch, EvalBatch: cfg.EvalBatch, Dropout: cfg.Dropout, Freeze: freeze}); err != nil {
		return nil, fmt.Errorf("worker: %s: %w", compute.Device, err)
	}
	if err := t.Reconfigure(coll, t.batch, t.epoch); err != nil {
		t.backend.Close()
		return nil, err
	}
	t.logReady(spec)
	return t, nil
}

// startState is where training starts: cfg.Resume's state, or fresh
// parameters (the seed's, or --init's) with a fresh Adam and dropout RNG.
func (t *Trainer) startState(spec alexnet.Spec, freeze alexnet.Freeze) error {
	cfg := t.cfg
	if cfg.Resume != "" {
		if err := t.restore(spec, freeze); err != nil {
			return err
		}
		if cfg.Init != "" { // a fine-tuning job that resumes goes on from its state
			t.log.Info("--resume wins over --init: the parameters are the state's", zap.String("resume", cfg.Resume), zap.String("init", cfg.Init))
		}
	} else {
		if err := t.initParams(spec, freeze); err != nil {
			return err
		}
		var err error
		if t.adam, err = alexnet.NewAdam(adamConfig(cfg), len(t.params.Flat)); err != nil {
			return err
		}
		t.pcg = rand.NewPCG(cfg.Seed, uint64(t.coll.Rank())+1)
	}
	t.rng = rand.New(t.pcg)
	return nil
}

// logReady says what the rank trains, on what, and from where.
func (t *Trainer) logReady(spec alexnet.Spec) {
	log := t.log
	if alexnet.BLASCoreNote != "" { // why OpenBLAS runs the core compute's BLAS names
		log = log.With(zap.String("blas_core_note", alexnet.BLASCoreNote))
	}
	log.Info("model ready",
		zap.String("variant", spec.Variant), zap.Int("parameters", len(t.params.Flat)),
		zap.Int("classes", spec.Classes), zap.Int("train_images", len(t.train.Samples)), zap.Int("val_images", len(t.val.Samples)),
		zap.Int("rank", t.coll.Rank()), zap.Int("world", t.coll.World()), zap.Int("batch_per_rank", t.batch),
		zap.String("compute", t.backend.Describe()), zap.Int("start_epoch", t.epoch))
	if t.coll.Rank() == 0 && t.cfg.SavesPth() && normalization(t.cfg) == sharding.NormalizeImageNet {
		// best.safetensors names its normalisation; a .pth holds tensors only.
		log.Info("best.pth carries no normalize setting: give predict --normalize imagenet with it", zap.String("file", filepath.Join(t.cfg.Out, configs.BestPthFile)))
	}
}

// fit refuses batches that the data cannot fill or this machine's memory
// cannot hold (bad input: before anything is allocated), and clamps the
// evaluation batch to the validation set. The clamp changes no result (each
// image's logits are its own) and only saves the memory of padding rows: an
// --eval-batch of 10^8 otherwise allocated 10^8 images for 40.
func fit(cfg configs.Job, spec alexnet.Spec, trainImages, valImages, world int, compute alexnet.Compute, log *zap.Logger) (configs.Job, error) {
	batch := cfg.WorkerBatch(world)
	if world == 1 {
		if err := cfg.CheckData(trainImages, 1); err != nil {
			return cfg, fmt.Errorf("worker: %w", err)
		}
	} else if batch > trainImages {
		return cfg, configs.BadInput(fmt.Errorf("worker: a batch of %d per rank is larger than the %d training images in %s", batch, trainImages, filepath.Join(cfg.Data, "train")))
	}
	if cfg.EvalBatch > valImages {
		log.Info("--eval-batch is larger than the validation set; using the set's size", zap.Int("eval_batch", cfg.EvalBatch), zap.Int("val_images", valImages))
		cfg.EvalBatch = valImages
	}
	if err := CheckMemory(cfg, spec, batch, compute.Device == "cpu", 1); err != nil {
		return cfg, fmt.Errorf("worker: %w", err)
	}
	return cfg, nil
}

// initParams draws the parameters from the seed or, with cfg.Init, takes
// those of the file by name (on t.initRank, the rank SyncState gives the
// others its parameters from, so the file is read once and every rank
// starts from the same bits). With the features frozen, a file that does not hold them all is
// refused: the convolutions would stay random.
func (t *Trainer) initParams(spec alexnet.Spec, freeze alexnet.Freeze) error {
	t.params = alexnet.NewParams(spec)
	if freeze == alexnet.FreezeFeatures && t.cfg.Init == "" {
		t.log.Warn("--freeze features without --init: the classifier trains on convolutions that stay as the seed drew them")
	}
	if t.cfg.Init == "" || t.coll.Rank() != t.initRank {
		t.params.Init(t.cfg.Seed)
		if t.cfg.Init != "" {
			t.log.Info(fmt.Sprintf("the initial parameters come from rank %d's --init file", t.initRank), zap.String("init", t.cfg.Init))
		}
		return nil
	}
	rep, err := t.params.InitFrom(t.cfg.Init, t.cfg.Seed)
	if err != nil {
		return configs.BadInput(fmt.Errorf("worker: --init (rank %d): %w", t.initRank, err))
	}
	if freeze == alexnet.FreezeFeatures {
		frozen := map[string]bool{}
		for _, tn := range t.params.Layout {
			frozen[tn.Name] = tn.Offset < spec.ClassifierOffset()
		}
		for i, name := range rep.ReinitNames() {
			if frozen[name] {
				return configs.BadInput(fmt.Errorf("worker: --freeze features keeps the convolutions as --init %s gives them, but it does not hold them (%s): is it the state_dict of the %s variant (--variant)?",
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
		return configs.BadInput(fmt.Errorf("worker: --resume: %w", err))
	}
	if st.Params.Spec != spec {
		return configs.BadInput(fmt.Errorf("worker: --resume %s holds a %s model with %d classes; the data and config make a %s model with %d classes",
			t.cfg.Resume, st.Params.Spec.Variant, st.Params.Spec.Classes, spec.Variant, spec.Classes))
	}
	// Going on with other inputs or other trained parameters would not be
	// the run the state is from.
	if norm := normalization(t.cfg).String(); st.Normalize != norm {
		return configs.BadInput(fmt.Errorf("worker: --resume %s trained with normalize %q; --normalize is %q", t.cfg.Resume, st.Normalize, norm))
	}
	if st.Freeze != freeze {
		return configs.BadInput(fmt.Errorf("worker: --resume %s trained with freeze %q; --freeze is %q", t.cfg.Resume, st.Freeze, freeze))
	}
	t.pcg = &rand.PCG{}
	if err := t.pcg.UnmarshalBinary(st.RNGState); err != nil {
		return configs.BadInput(fmt.Errorf("worker: --resume %s: dropout RNG state: %w", t.cfg.Resume, err))
	}
	t.params, t.adam, t.epoch, t.bestAcc = st.Params, st.Adam, st.Epoch, st.BestAcc
	// The learning rate may be changed on resume; the moments carry over.
	t.adam.Config = adamConfig(t.cfg)
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
	if world := coll.World(); world > 1 {
		if err := t.ring.fit(world, len(t.params.Flat)-t.trainFrom, t.backend.HostVector); err != nil {
			return fmt.Errorf("worker: the gradient's host vector: %w", err)
		}
	}
	if err := t.backend.SetBatch(batch); err != nil {
		return err
	}
	t.batch = batch
	if coll.Rank() == 0 {
		if err := os.MkdirAll(t.cfg.Out, 0o755); err != nil {
			return configs.BadInput(fmt.Errorf("worker: output folder (--out): %w", err))
		}
		t.sweep()
		if err := sharding.WriteClassIndices(filepath.Join(t.cfg.Out, configs.ClassIndicesFile), t.train.Classes); err != nil {
			return err
		}
	}
	return nil
}

// OutputFiles are the files rank 0 writes into the output folder.
var OutputFiles = []string{configs.BestFile, configs.BestPthFile, configs.StateFile, configs.ClassIndicesFile}

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
		if t.ctl.EpochDone != nil {
			if err := t.ctl.EpochDone(ctx, res); err != nil {
				return err
			}
		}
	}
	return nil
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

func (t *Trainer) saveState() error {
	rs, err := t.pcg.MarshalBinary()
	if err != nil {
		return err
	}
	freeze, _ := alexnet.ParseFreeze(t.cfg.Freeze) // checked by NewTrainer
	return alexnet.SaveTrainState(filepath.Join(t.cfg.Out, configs.StateFile), &alexnet.TrainState{
		Params: t.params, Adam: t.adam, Epoch: t.epoch, BestAcc: t.bestAcc,
		Seed: t.cfg.Seed, RNGState: rs, Classes: t.train.Classes,
		Normalize: normalization(t.cfg).String(), Freeze: freeze,
	})
}
