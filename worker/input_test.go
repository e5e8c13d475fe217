package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
)

// A batch larger than the training set is refused as bad input before any
// graph is built (--batch 100000000 ended in the runtime's out-of-memory
// crash); an evaluation batch larger than the validation set is cut to it.
func TestBatchLargerThanTheData(t *testing.T) {
	data := synthData(t, 8) // 40 training images, 10 validation images
	cfg := tinyConfig(data, t.TempDir())
	cfg.Batch = 100000000
	_, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), Controller{}, zap.NewNop())
	if !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), "--batch 100000000") || !strings.Contains(err.Error(), "40 training images") {
		t.Errorf("--batch 100000000: %v", err)
	}
	cfg.Batch = 32
	cfg.WorkerBatchSize = 41
	if _, err := NewTrainer(cfg, fakeWorld{n: 2}, alexnet.CPUCompute(), Controller{}, zap.NewNop()); !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), "a batch of 41 per rank") {
		t.Errorf("41 per rank of 40 images: %v", err)
	}
	if err := cfg.CheckData(40, 2); err == nil || !strings.Contains(err.Error(), "worker_batch 41 x 2 workers") {
		t.Errorf("global batch 82 of 40 images: %v", err)
	}
	cfg.WorkerBatchSize = 0
	cfg.EvalBatch = 100000000
	tr, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), Controller{}, zap.NewNop())
	if err != nil {
		t.Fatalf("--eval-batch 100000000: %v", err)
	}
	defer tr.Close()
	if tr.cfg.EvalBatch != 10 {
		t.Errorf("eval batch %d, want the 10 validation images", tr.cfg.EvalBatch)
	}
	if _, err := tr.Validate(context.Background()); err != nil {
		t.Error(err)
	}
}

// A batch whose estimated memory is more than the machine has left is
// refused, naming the flag, the estimate and what is available.
func TestBatchBeyondTheMachinesMemory(t *testing.T) {
	data := synthData(t, 8)
	cfg := tinyConfig(data, t.TempDir())
	cfg.Variant, cfg.Batch, cfg.EvalBatch = "seed", 32, 8
	spec, _ := alexnet.NewSpec("seed", 5)
	need := Footprint(cfg, spec, 32, true).Total()
	defer func(f func() (int64, string, error)) { hostMemory = f }(hostMemory)
	avail := need - 1
	hostMemory = func() (int64, string, error) { return avail, "MemAvailable in the test", nil }
	_, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), Controller{}, zap.NewNop())
	if !errors.Is(err, configs.ErrBadInput) {
		t.Fatalf("%d bytes needed, 1 less available: %v", need, err)
	}
	for _, want := range []string{"worker: --batch 32:", "seed model training 32 images a step", alexnet.FormatBytes(need), "available (MemAvailable in the test)", "lower --batch"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// The evaluation batch, when it is the larger part, is the flag named.
	cfg.Batch, cfg.EvalBatch = 1, 10
	avail = Footprint(cfg, spec, 1, true).Total() - 1
	if _, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), Controller{}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "worker: --eval-batch 10:") {
		t.Errorf("a large evaluation batch: %v", err)
	}
	// A GPU holds the graphs: only the host's part is checked.
	if err := CheckMemory(cfg, spec, 1, false, 1); err != nil {
		t.Errorf("on a GPU: %v", err)
	}
	// Several local workers share the machine.
	avail = need + need/2
	if err := CheckMemory(cfg, spec, 32, true, 1); err != nil {
		t.Errorf("one worker in 1.5x its need: %v", err)
	}
	if err := CheckMemory(cfg, spec, 32, true, 2); err == nil || !strings.Contains(err.Error(), "2 workers on this machine") {
		t.Errorf("two workers in 1.5x the need of one: %v", err)
	}
}

// What is wrong with --data, --out or --resume is bad input (exit 2), named.
func TestBadInputFilesAreMarked(t *testing.T) {
	data := synthData(t, 8)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, []byte("x"), 0o644)
	state := filepath.Join(t.TempDir(), configs.StateFile)
	{
		cfg := tinyConfig(data, filepath.Dir(state))
		cfg.Epochs = 1
		train(t, cfg)
	}
	whole, _ := os.ReadFile(state)
	truncated := filepath.Join(t.TempDir(), "truncated.safetensors")
	os.WriteFile(truncated, whole[:len(whole)/2], 0o644)
	model := filepath.Join(filepath.Dir(state), configs.BestFile)
	cases := []struct {
		name string
		edit func(*configs.Job)
		want string
	}{
		{"missing data", func(c *configs.Job) { c.Data = filepath.Join(data, "nope") }, "--data"},
		{"out is a file", func(c *configs.Job) { c.Out = file }, "--out"},
		{"missing resume", func(c *configs.Job) { c.Resume = filepath.Join(data, "nope.safetensors") }, "--resume"},
		{"truncated resume", func(c *configs.Job) { c.Resume = truncated }, "truncated.safetensors"},
		{"model as resume", func(c *configs.Job) { c.Resume = model }, "not a training state"},
		{"other variant", func(c *configs.Job) { c.Resume, c.Variant = state, "seed" }, "holds a tiny model"},
		{"other normalize", func(c *configs.Job) { c.Resume, c.Normalize = state, "imagenet" }, `trained with normalize "seed"; --normalize is "imagenet"`},
		{"other freeze", func(c *configs.Job) { c.Resume, c.Freeze = state, "features" }, `trained with freeze "none"; --freeze is "features"`},
	}
	for _, c := range cases {
		cfg := tinyConfig(data, t.TempDir())
		c.edit(&cfg)
		tr, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), Controller{}, zap.NewNop())
		if err == nil {
			tr.Close()
		}
		if !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want bad input naming %q", c.name, err, c.want)
		}
	}
}

// A kill while rank 0 wrote a checkpoint left .state.safetensors.tmp-* in
// --out for ever; rank 0 removes the stale ones of its own files at start,
// and nothing else.
func TestStaleTemporaryFilesAreRemoved(t *testing.T) {
	out := t.TempDir()
	old := time.Now().Add(-time.Hour)
	var stale, kept []string
	for _, name := range []string{".state.safetensors.tmp-2912834", ".best.safetensors.tmp-1", ".class_indices.json.tmp-77"} {
		stale = append(stale, filepath.Join(out, name))
	}
	for _, name := range []string{".training.png.tmp-5", "notes.txt", ".state.safetensors.tmp-x1", "state.safetensors.tmp-1"} {
		kept = append(kept, filepath.Join(out, name))
	}
	for _, p := range append(append([]string{}, stale...), kept...) {
		os.WriteFile(p, []byte("half a file"), 0o644)
		os.Chtimes(p, old, old)
	}
	tr, err := NewTrainer(tinyConfig(synthData(t, 8), out), Solo{}, alexnet.CPUCompute(), Controller{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()
	for _, p := range stale {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there", p)
		}
	}
	for _, p := range kept {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed", p)
		}
	}
}

// The epoch's report counts the unreadable images of both splits, apart:
// epoch 1 said bad_files 3 after 5 had been skipped (3 train, 2 val), as the
// count was taken before the validation.
func TestBadFilesOfBothSplitsAreCounted(t *testing.T) {
	data := synthData(t, 8)
	for i, rel := range []string{"train/circle/bad0.png", "train/ring/bad1.png", "train/square/bad2.jpg", "val/circle/bad3.png", "val/cross/bad4.png"} {
		if err := os.WriteFile(filepath.Join(data, rel), []byte(strings.Repeat("not an image ", i+1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := tinyConfig(data, t.TempDir())
	cfg.Epochs = 2
	reg := prometheus.NewRegistry()
	var res []EpochResult
	ctl := Controller{Telemetry: Telemetry{Metrics: NewMetrics(reg)},
		EpochDone: func(_ context.Context, r EpochResult) error { res = append(res, r); return nil }}
	tr, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), ctl, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.BadTrainFiles != 3 || r.BadValFiles != 2 {
			t.Errorf("epoch %d: %d bad training files, %d bad validation files; want 3 and 2", r.Epoch, r.BadTrainFiles, r.BadValFiles)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if f.GetName() == "alexring_bad_files" {
			for _, m := range f.GetMetric() {
				got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
			}
		}
	}
	if got["train"] != 3 || got["val"] != 2 {
		t.Errorf("alexring_bad_files by split %v, want train 3 and val 2", got)
	}
}

// A NaN dropout passed Validate (every comparison with NaN is false) and
// made NaN activations; a ring chunk above gRPC's message limit passed it
// and failed only when the ring opened, after the data was scanned.
func TestValidateRefusesNaNAndHugeChunks(t *testing.T) {
	cfg := tinyConfig("data", "out")
	cfg.Dropout = math.NaN()
	if err := cfg.Validate(); !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), "--dropout NaN") {
		t.Errorf("dropout NaN: %v", err)
	}
	for _, chunk := range []int{4 << 20, 4, -1} {
		cfg = tinyConfig("data", "out")
		cfg.Ring.ChunkBytes = chunk
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("chunk_bytes %d", chunk)) {
			t.Errorf("chunks of %d bytes: %v", chunk, err)
		}
	}
	cfg = tinyConfig("data", "out")
	cfg.Ring.ChunkBytes = 0 // the ring's choice
	if err := cfg.Validate(); err != nil {
		t.Errorf("chunk_bytes 0: %v", err)
	}
}
