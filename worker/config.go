package worker

import (
	"fmt"
	"time"

	"github.com/alexring/alexring/alexnet"
)

// Config is one training job as a rank sees it. DefaultConfig is the seed's
// train.py: the seed model, batch 32, Adam 2e-4, 10 epochs, dropout 0.5 and the
// train augmentation.
type Config struct {
	Data    string `yaml:"data" json:"data"`       // ImageFolder root holding train/ and val/
	Out     string `yaml:"out" json:"out"`         // where rank 0 writes best.safetensors, state.safetensors, class_indices.json
	Resume  string `yaml:"resume" json:"resume"`   // a state.safetensors to continue from (empty: start fresh)
	Variant string `yaml:"variant" json:"variant"` // model variant (alexnet.Variants)

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
		Dropout: 0.5, Augment: true, EvalBatch: 16,
		Ring: RingConfig{ChunkBytes: 1 << 20, OpTimeout: 60 * time.Second},
	}
}

// Validate reports what is wrong with the config, naming the setting (its
// flag where it has one); the command that runs it names itself.
func (c Config) Validate() error {
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
	case c.Dropout < 0 || c.Dropout >= 1:
		return fmt.Errorf("--dropout %g, want [0, 1)", c.Dropout)
	case c.Ring.ChunkBytes < 8 || c.Ring.OpTimeout <= 0:
		return fmt.Errorf("ring chunk_bytes %d op_timeout %v: want at least 8 bytes and a positive timeout", c.Ring.ChunkBytes, c.Ring.OpTimeout)
	case c.LoaderGoroutines < 0:
		return fmt.Errorf("loader goroutines %d", c.LoaderGoroutines)
	}
	if _, err := alexnet.NewSpec(c.Variant, 1); err != nil {
		return fmt.Errorf("--variant: %w", err)
	}
	if err := c.Adam().Validate(); err != nil {
		return fmt.Errorf("--lr: %w", err)
	}
	return nil
}

// CheckWorld reports a global batch that the world size does not divide.
func (c Config) CheckWorld(world int) error {
	if c.WorkerBatchSize > 0 {
		return nil
	}
	if world < 1 || c.Batch%world != 0 {
		return fmt.Errorf("global batch %d is not divisible by the world size %d", c.Batch, world)
	}
	return nil
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
