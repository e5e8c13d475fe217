package configs

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Job is one training job: what the job files (YAML) and the commands' flags
// set, what every rank trains. DefaultJob is the seed's train.py: the seed
// model, batch 32, Adam 2e-4, 10 epochs, dropout 0.5 and the train
// augmentation.
//
// It is the job's, the same on every rank: a joined worker takes it from the
// coordinator's plan (controlpb.JobSettings), but for Data and EvalBatch,
// which each worker may set for itself (another mount point, its memory), and
// LoaderGoroutines and StepLog, which are each worker's alone (its cores, its
// logs) and which the plans do not carry.
type Job struct {
	Data    string `yaml:"data"`    // ImageFolder root holding train/ and val/
	Out     string `yaml:"out"`     // where rank 0 writes best.safetensors, state.safetensors, class_indices.json
	Resume  string `yaml:"resume"`  // a state.safetensors to continue from (empty: start fresh)
	Variant string `yaml:"variant"` // model variant (Variants)
	// Init is a state_dict to fine-tune from (safetensors or PyTorch's
	// .pth/.pt): its tensors of the model's names and shapes, the rest drawn
	// as the seed does (alexnet.Params.InitFrom). Rank 0 reads it and
	// broadcasts the result, so it must be at this path on whichever worker
	// becomes rank 0 (or the ring's state root, when the first ring did not
	// open and another replaced it). Resume, when set, wins over it.
	Init string `yaml:"init"`
	// Freeze is what does not train: "none" (or empty) or "features", which
	// trains the classifier only (the convolutions' gradient is neither
	// computed nor all-reduced).
	Freeze string `yaml:"freeze"`
	// SaveFormat is how rank 0 writes the best model: "safetensors"
	// (best.safetensors), "pth" (best.pth, a state_dict that PyTorch's
	// torch.load + load_state_dict takes) or "both" (also when empty).
	SaveFormat string `yaml:"save_format"`
	// Normalize is the mean and std the images are normalised with after
	// ToTensor, in training, validation and (from the model file's
	// metadata) predict: "seed" (0.5, 0.5 per channel, as train.py; also
	// when empty) or "imagenet" (what torchvision's pretrained weights
	// expect, for fine-tuning them).
	Normalize string `yaml:"normalize"`

	Epochs int `yaml:"epochs"`
	// Batch is the global batch: the samples of one optimiser step summed over
	// the ranks; each rank takes Batch/world (it must divide).
	Batch int `yaml:"batch"`
	// WorkerBatch, when set, is each rank's batch instead: the global batch is
	// then WorkerBatch x world.
	WorkerBatchSize int     `yaml:"worker_batch"`
	LR              float64 `yaml:"lr"`
	Seed            uint64  `yaml:"seed"`
	// Dropout is the drop probability of the classifier's dropout layers; 0 turns
	// them off (the parity checks of data parallelism need that).
	Dropout float64 `yaml:"dropout"`
	// Augment applies RandomResizedCrop and the flip to training images;
	// without it they get the validation transform.
	Augment bool `yaml:"augment"`

	EvalBatch        int `yaml:"eval_batch"`        // validation batch (memory, not numerics)
	LoaderGoroutines int `yaml:"loader_goroutines"` // decode goroutines per loader; 0 means GOMAXPROCS
	StepLog          int `yaml:"-"`                 // log every N steps at debug level; 0 never

	// SkipNonFinite skips an optimiser step whose averaged gradient holds a NaN
	// or an infinity (every rank skips it); otherwise the job stops, naming the
	// step and the rank that produced it, before Adam touches the parameters.
	SkipNonFinite bool `yaml:"skip_nonfinite"`

	Ring Ring `yaml:"ring"`
}

// Ring is how the ranks' all-reduce moves data.
type Ring struct {
	ChunkBytes int           `yaml:"chunk_bytes"` // bytes per message; 0: the ring picks (256 KiB between the ranks of one host, 1 MiB otherwise)
	FP16       bool          `yaml:"fp16"`        // half floats on the wire
	OpTimeout  time.Duration `yaml:"op_timeout"`  // a collective's deadline: a peer silent that long is lost
	// Overlap all-reduces the classifier's gradient (93% of the seed's bytes)
	// while the convolutions' backward runs. It pays where the backward leaves
	// the CPU free; with one core per CPU worker the two only take turns, and
	// bench scaling measured 1.52-1.71x with it against 1.76-1.84x without.
	Overlap bool `yaml:"overlap"`
}

// DefaultJob is the seed's training.
func DefaultJob() Job {
	return Job{
		Out: "out", Variant: DefaultVariant, Epochs: 10, Batch: 32, LR: 2e-4,
		Dropout: 0.5, Augment: true, EvalBatch: 16, SaveFormat: "both", Normalize: "seed",
		Ring: Ring{OpTimeout: 60 * time.Second},
	}
}

// The names a job may choose from are the model's (alexnet) and the data's
// (sharding): they are listed here, so that whoever checks a job needs
// neither, and worker's tests check that the lists agree.

// DefaultVariant is alexnet.DefaultVariant.
const DefaultVariant = "seed"

// Variants are alexnet.Variants(), sorted.
var Variants = []string{"full", "seed", "tiny", "torchvision"}

// Freezes are alexnet's Freeze values ("" is "none").
var Freezes = []string{"none", "features"}

// Normalizations are sharding.ParseNormalization's names ("" is "seed").
var Normalizations = []string{"seed", "imagenet"}

// ErrBadInput marks an error in what the user gave: a flag, the config, or a
// file or folder it names (--data, --out, --resume). The commands exit 2 on
// it, as for a bad flag, and 1 on what fails while the job runs.
var ErrBadInput = errors.New("bad input")

// BadInput marks err as bad input (errors.Is(err, ErrBadInput)); its message
// is unchanged. nil stays nil.
func BadInput(err error) error {
	if err == nil {
		return nil
	}
	return badInput{err}
}

type badInput struct{ error }

func (e badInput) Unwrap() []error { return []error{e.error, ErrBadInput} }

// maxChunkBytes is the ring's largest message payload (allreduce refuses more:
// gRPC's 4 MiB message limit less its headers).
const maxChunkBytes = 4<<20 - 1024

// Validate reports what is wrong with the job, naming the setting (its flag
// where it has one); the command that runs it names itself. Every error is
// bad input.
func (c Job) Validate() error { return BadInput(c.validate()) }

func (c Job) validate() error {
	switch {
	case c.Data == "":
		return fmt.Errorf("no data folder (--data)")
	case c.Out == "":
		return fmt.Errorf("no output folder (--out)")
	case c.Epochs < 1:
		return fmt.Errorf("--epochs %d, want at least 1", c.Epochs)
	case c.Batch < 1:
		return fmt.Errorf("--batch %d, want at least 1", c.Batch)
	case c.WorkerBatchSize < 0:
		return fmt.Errorf("worker_batch %d, want at least 1 (or 0 to split the global batch)", c.WorkerBatchSize)
	case c.EvalBatch < 1:
		return fmt.Errorf("eval batch %d, want at least 1", c.EvalBatch)
	case !(c.Dropout >= 0 && c.Dropout < 1): // NaN too
		return fmt.Errorf("--dropout %g, want [0, 1)", c.Dropout)
	case c.Ring.ChunkBytes != 0 && (c.Ring.ChunkBytes < 8 || c.Ring.ChunkBytes > maxChunkBytes) || c.Ring.OpTimeout <= 0:
		return fmt.Errorf("ring chunk_bytes %d op_timeout %v: want 8 to %d bytes (or 0 for the ring's choice) and a positive timeout", c.Ring.ChunkBytes, c.Ring.OpTimeout, maxChunkBytes)
	case c.LoaderGoroutines < 0:
		return fmt.Errorf("loader goroutines %d", c.LoaderGoroutines)
	}
	if err := CheckVariant(c.Variant); err != nil {
		return fmt.Errorf("--variant: %w", err)
	}
	if err := CheckFreeze(c.Freeze); err != nil {
		return fmt.Errorf("--freeze: %w", err)
	}
	switch c.SaveFormat {
	case "", "both", "safetensors", "pth":
	default:
		return fmt.Errorf("--save-format %q, want safetensors, pth or both", c.SaveFormat)
	}
	if err := CheckNormalize(c.Normalize); err != nil {
		return fmt.Errorf("--normalize: %w", err)
	}
	if !(c.LR > 0) || math.IsInf(c.LR, 0) {
		// alexnet.AdamConfig.Validate's words: the other Adam settings are its defaults.
		return fmt.Errorf("--lr: alexnet: Adam learning rate %g, want > 0", c.LR)
	}
	return nil
}

// CheckVariant refuses a variant alexnet does not know, in alexnet.NewSpec's
// words.
func CheckVariant(v string) error {
	if !slices.Contains(Variants, v) {
		return fmt.Errorf("alexnet: unknown variant %q (known: %s)", v, strings.Join(Variants, ", "))
	}
	return nil
}

// CheckFreeze refuses a freeze alexnet does not know, in alexnet.ParseFreeze's
// words.
func CheckFreeze(f string) error {
	if s := strings.TrimSpace(f); s != "" && !slices.Contains(Freezes, s) {
		return fmt.Errorf("alexnet: freeze %q: want none or features", f)
	}
	return nil
}

// CheckNormalize refuses a normalisation sharding does not know, in
// sharding.ParseNormalization's words.
func CheckNormalize(n string) error {
	if s := strings.TrimSpace(n); s != "" && !slices.Contains(Normalizations, s) {
		return fmt.Errorf("%q, want seed or imagenet", n)
	}
	return nil
}

// SavesSafetensors reports whether rank 0 writes best.safetensors.
func (c Job) SavesSafetensors() bool { return c.SaveFormat != "pth" }

// SavesPth reports whether rank 0 writes best.pth.
func (c Job) SavesPth() bool { return c.SaveFormat != "safetensors" }

// BestModel is the best model's path: best.safetensors where it is written,
// else best.pth.
func (c Job) BestModel() string {
	if c.SavesSafetensors() {
		return filepath.Join(c.Out, BestFile)
	}
	return filepath.Join(c.Out, BestPthFile)
}

// CheckWorld reports a global batch that the world size does not divide.
func (c Job) CheckWorld(world int) error {
	if c.WorkerBatchSize > 0 {
		return nil
	}
	if world < 1 || c.Batch%world != 0 {
		return BadInput(fmt.Errorf("global batch %d is not divisible by the world size %d", c.Batch, world))
	}
	return nil
}

// CheckData refuses a global batch (that of world ranks) larger than the
// training set: every rank's shard would be shorter than its batch, one short
// step an epoch, and the graphs sized for images that are not there.
func (c Job) CheckData(trainImages, world int) error {
	if global := c.WorkerBatch(world) * world; global > trainImages {
		flag := fmt.Sprintf("--batch %d", c.Batch)
		if c.WorkerBatchSize > 0 {
			flag = fmt.Sprintf("worker_batch %d x %d workers", c.WorkerBatchSize, world)
		}
		return BadInput(fmt.Errorf("%s: a global batch larger than the %d training images in %s; want at most %d",
			flag, trainImages, filepath.Join(c.Data, "train"), trainImages))
	}
	return nil
}

// WorkerBatch is each rank's share of the global batch.
func (c Job) WorkerBatch(world int) int {
	if c.WorkerBatchSize > 0 {
		return c.WorkerBatchSize
	}
	return c.Batch / world
}
