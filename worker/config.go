package worker

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/sharding"
)

// Config is one training job as a rank sees it. DefaultConfig is the seed's
// train.py: the seed model, batch 32, Adam 2e-4, 10 epochs, dropout 0.5 and the
// train augmentation.
type Config struct {
	Data    string `yaml:"data" json:"data"`       // ImageFolder root holding train/ and val/
	Out     string `yaml:"out" json:"out"`         // where rank 0 writes best.safetensors, state.safetensors, class_indices.json
	Resume  string `yaml:"resume" json:"resume"`   // a state.safetensors to continue from (empty: start fresh)
	Variant string `yaml:"variant" json:"variant"` // model variant (alexnet.Variants)
	// Init is a state_dict to fine-tune from (safetensors or PyTorch's
	// .pth/.pt): its tensors of the model's names and shapes, the rest drawn
	// as the seed does (alexnet.Params.InitFrom). Rank 0 reads it and
	// broadcasts the result, so it must be at this path on whichever worker
	// becomes rank 0 (or the ring's state root, when the first ring did not
	// open and another replaced it). Resume, when set, wins over it.
	Init string `yaml:"init" json:"init"`
	// initRank is the rank that reads Init: the one whose state SyncState
	// gives the others (0 but for a ring that replaced one that never opened).
	initRank int
	// Freeze is what does not train: "none" (or empty) or "features", which
	// trains the classifier only (the convolutions' gradient is neither
	// computed nor all-reduced).
	Freeze string `yaml:"freeze" json:"freeze"`
	// SaveFormat is how rank 0 writes the best model: "safetensors"
	// (best.safetensors), "pth" (best.pth, a state_dict that PyTorch's
	// torch.load + load_state_dict takes) or "both" (also when empty).
	SaveFormat string `yaml:"save_format" json:"save_format"`
	// Normalize is the mean and std the images are normalised with after
	// ToTensor, in training, validation and (from the model file's
	// metadata) predict: "seed" (0.5, 0.5 per channel, as train.py; also
	// when empty) or "imagenet" (what torchvision's pretrained weights
	// expect, for fine-tuning them).
	Normalize string `yaml:"normalize" json:"normalize"`

	Epochs int `yaml:"epochs" json:"epochs"`
	// Batch is the global batch: the samples of one optimiser step summed over
	// the ranks; each rank takes Batch/world (it must divide).
	Batch int `yaml:"batch" json:"batch"`
	// WorkerBatch, when set, is each rank's batch instead: the global batch is
	// then WorkerBatch x world.
	WorkerBatchSize int     `yaml:"worker_batch" json:"worker_batch"`
	LR              float64 `yaml:"lr" json:"lr"`
	Seed            uint64  `yaml:"seed" json:"seed"`
	// Dropout is the drop probability of the classifier's dropout layers; 0 turns
	// them off (the parity checks of data parallelism need that).
	Dropout float64 `yaml:"dropout" json:"dropout"`
	// Augment applies RandomResizedCrop and the flip to training images;
	// without it they get the validation transform.
	Augment bool `yaml:"augment" json:"augment"`

	EvalBatch        int `yaml:"eval_batch" json:"eval_batch"`               // validation batch (memory, not numerics)
	LoaderGoroutines int `yaml:"loader_goroutines" json:"loader_goroutines"` // decode goroutines per loader; 0 means GOMAXPROCS
	StepLog          int `yaml:"-" json:"-"`                                 // log every N steps at debug level; 0 never

	// SkipNonFinite skips an optimiser step whose averaged gradient holds a NaN
	// or an infinity (every rank skips it); otherwise the job stops, naming the
	// step and the rank that produced it, before Adam touches the parameters.
	SkipNonFinite bool `yaml:"skip_nonfinite" json:"skip_nonfinite"`

	Ring RingConfig `yaml:"ring" json:"ring"`
}

// RingConfig is how the ranks' all-reduce moves data.
type RingConfig struct {
	ChunkBytes int           `yaml:"chunk_bytes" json:"chunk_bytes"` // bytes per message
	FP16       bool          `yaml:"fp16" json:"fp16"`               // half floats on the wire
	OpTimeout  time.Duration `yaml:"op_timeout" json:"op_timeout"`   // a collective's deadline: a peer silent that long is lost
	// Overlap all-reduces the classifier's gradient (93% of the seed's bytes)
	// while the convolutions' backward runs. It pays where the backward leaves
	// the CPU free; with one core per CPU worker the two only take turns, and
	// bench scaling measured 1.52-1.71x with it against 1.76-1.84x without.
	Overlap bool `yaml:"overlap" json:"overlap"`
}

// DefaultConfig is the seed's training.
func DefaultConfig() Config {
	return Config{
		Out: "out", Variant: alexnet.DefaultVariant, Epochs: 10, Batch: 32, LR: 2e-4,
		Dropout: 0.5, Augment: true, EvalBatch: 16, SaveFormat: "both", Normalize: "seed",
		Ring: RingConfig{ChunkBytes: 1 << 20, OpTimeout: 60 * time.Second},
	}
}

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

// Validate reports what is wrong with the config, naming the setting (its
// flag where it has one); the command that runs it names itself. Every error
// is bad input.
func (c Config) Validate() error { return BadInput(c.validate()) }

func (c Config) validate() error {
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
	case c.Ring.ChunkBytes < 8 || c.Ring.ChunkBytes > maxChunkBytes || c.Ring.OpTimeout <= 0:
		return fmt.Errorf("ring chunk_bytes %d op_timeout %v: want 8 to %d bytes and a positive timeout", c.Ring.ChunkBytes, c.Ring.OpTimeout, maxChunkBytes)
	case c.LoaderGoroutines < 0:
		return fmt.Errorf("loader goroutines %d", c.LoaderGoroutines)
	}
	if _, err := alexnet.NewSpec(c.Variant, 1); err != nil {
		return fmt.Errorf("--variant: %w", err)
	}
	if _, err := alexnet.ParseFreeze(c.Freeze); err != nil {
		return fmt.Errorf("--freeze: %w", err)
	}
	switch c.SaveFormat {
	case "", "both", "safetensors", "pth":
	default:
		return fmt.Errorf("--save-format %q, want safetensors, pth or both", c.SaveFormat)
	}
	if _, err := sharding.ParseNormalization(c.Normalize); err != nil {
		return fmt.Errorf("--normalize: %w", err)
	}
	if err := c.Adam().Validate(); err != nil {
		return fmt.Errorf("--lr: %w", err)
	}
	return nil
}

// Normalization is the parsed Normalize (the seed's when it does not parse:
// Validate reports that).
func (c Config) Normalization() sharding.Normalization {
	n, _ := sharding.ParseNormalization(c.Normalize)
	return n
}

// SavesSafetensors reports whether rank 0 writes best.safetensors.
func (c Config) SavesSafetensors() bool { return c.SaveFormat != "pth" }

// SavesPth reports whether rank 0 writes best.pth.
func (c Config) SavesPth() bool { return c.SaveFormat != "safetensors" }

// BestModel is the best model's path: best.safetensors where it is written,
// else best.pth.
func (c Config) BestModel() string {
	if c.SavesSafetensors() {
		return filepath.Join(c.Out, BestFile)
	}
	return filepath.Join(c.Out, BestPthFile)
}

// CheckWorld reports a global batch that the world size does not divide.
func (c Config) CheckWorld(world int) error {
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
func (c Config) CheckData(trainImages, world int) error {
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

// hostMemory is what this machine has left (a variable for the tests).
var hostMemory = alexnet.HostMemory

// loaderPrefetch is how many batches a loader decodes ahead (sharding's
// default), each a buffer of the batch's images.
const loaderPrefetch = 2

// Footprint estimates the host memory of one rank that trains batch images a
// step: the parameter-sized vectors, the graphs (on the CPU: a GPU holds its
// own in device memory) and the loaders' batch buffers.
func (c Config) Footprint(spec alexnet.Spec, batch int, onCPU bool) alexnet.Footprint {
	f := alexnet.CPUFootprint(spec, batch, c.EvalBatch)
	if !onCPU {
		f.Train, f.Eval = 0, 0
	}
	per := spec.ImageBytes() + 16 // an image, its label and index
	f.Train += loaderPrefetch * int64(batch) * per
	f.Eval += loaderPrefetch * int64(c.EvalBatch) * per
	return f
}

// CheckMemory refuses a batch per rank, or an evaluation batch, whose
// estimated memory is more than this machine has left (MemAvailable, or a
// container's cgroup limit): ranks such ranks on this machine, one of which
// validates. The error names the flag, the estimate and what is available.
// Where the machine's memory cannot be read, nothing is refused.
func (c Config) CheckMemory(spec alexnet.Spec, batch int, onCPU bool, ranks int) error {
	f := c.Footprint(spec, batch, onCPU)
	per := f
	per.Eval = 0
	need := alexnet.AddSat(alexnet.MulSat(int64(ranks), per.Total()), f.Eval)
	avail, from, err := hostMemory()
	if err != nil || need <= avail {
		return nil
	}
	flag, other := fmt.Sprintf("--batch %d", c.Batch), fmt.Sprintf("--eval-batch %d", c.EvalBatch)
	if c.WorkerBatchSize > 0 {
		flag = fmt.Sprintf("worker_batch %d", c.WorkerBatchSize)
	}
	if f.Eval > f.Train {
		flag, other = other, flag
	}
	who := fmt.Sprintf("a %s model training %d images a step", spec.Variant, batch)
	if ranks > 1 {
		who = fmt.Sprintf("%d workers on this machine, each training %d images a step (the %s model)", ranks, batch, spec.Variant)
	}
	where := "on the CPU"
	if !onCPU {
		where = "in host memory (the graphs are on the GPU)"
	}
	return BadInput(fmt.Errorf("%s: %s %s need about %s (%v), more than the %s available (%s); lower %s (or %s)",
		flag, who, where, alexnet.FormatBytes(need), f, alexnet.FormatBytes(avail), from, strings.Fields(flag)[0], strings.Fields(other)[0]))
}

// WorkerBatch is each rank's share of the global batch.
func (c Config) WorkerBatch(world int) int {
	if c.WorkerBatchSize > 0 {
		return c.WorkerBatchSize
	}
	return c.Batch / world
}

// Adam is the optimiser's configuration.
func (c Config) Adam() alexnet.AdamConfig {
	a := alexnet.DefaultAdam()
	a.LR = c.LR
	return a
}
