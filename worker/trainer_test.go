package worker

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/sharding"
)

func synthData(t *testing.T, perClass int) string {
	t.Helper()
	dir := t.TempDir()
	if err := sharding.Synthesize(dir, sharding.SynthConfig{Train: perClass, Val: perClass / 4, Size: 48, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func tinyConfig(data, out string) configs.Job {
	cfg := configs.DefaultJob()
	cfg.Data, cfg.Out, cfg.Variant = data, out, "tiny"
	cfg.Batch, cfg.EvalBatch, cfg.LoaderGoroutines = 16, 8, 2
	return cfg
}

func train(t *testing.T, cfg configs.Job) (*Trainer, []EpochResult) {
	t.Helper()
	var res []EpochResult
	ctl := Controller{EpochDone: func(_ context.Context, r EpochResult) error { res = append(res, r); return nil }}
	tr, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), ctl, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Close)
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	return tr, res
}

func TestStandaloneLossFallsAndCheckpoints(t *testing.T) {
	out := t.TempDir()
	cfg := tinyConfig(synthData(t, 40), out)
	cfg.Epochs, cfg.LR, cfg.Dropout, cfg.Augment = 6, 3e-3, 0, false
	tr, res := train(t, cfg)
	if len(res) != 6 {
		t.Fatalf("%d epochs reported", len(res))
	}
	if !(res[5].TrainLoss < res[0].TrainLoss-0.1) {
		t.Errorf("train loss went %.4f -> %.4f; it should fall", res[0].TrainLoss, res[5].TrainLoss)
	}
	if res[0].Images != 200 || !res[0].Best {
		t.Errorf("epoch 1: %+v", res[0])
	}
	p, meta, err := alexnet.LoadModel(filepath.Join(out, configs.BestFile))
	if err != nil {
		t.Fatal(err)
	}
	best := 0.0
	for _, r := range res {
		best = max(best, r.ValAccuracy)
	}
	if meta.ValAccuracy != best || strings.Join(meta.Classes, ",") != strings.Join(sharding.SynthClasses, ",") || p.Spec.Variant != "tiny" {
		t.Errorf("best.safetensors metadata %+v, best accuracy %v", meta, best)
	}
	classes, err := sharding.ReadClassIndices(filepath.Join(out, configs.ClassIndicesFile))
	if err != nil || len(classes) != 5 {
		t.Errorf("class_indices.json: %v %v", classes, err)
	}
	st, err := alexnet.LoadTrainState(filepath.Join(out, configs.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Epoch != 6 || st.Adam.Step != 6*13 {
		t.Errorf("state at epoch %d step %d, want 6 and %d", st.Epoch, st.Adam.Step, 6*13)
	}
	for i := range st.Params.Flat {
		if st.Params.Flat[i] != tr.Params().Flat[i] {
			t.Fatal("state parameters differ from the trainer's")
		}
	}
}

// Resuming from the training state gives the same parameters as an
// uninterrupted run, bit for bit, with dropout and augmentation on.
func TestResumeIsExact(t *testing.T) {
	data := synthData(t, 8)
	straight := tinyConfig(data, t.TempDir())
	straight.Epochs = 3
	a, _ := train(t, straight)

	split := tinyConfig(data, t.TempDir())
	split.Epochs = 1
	train(t, split)
	split.Epochs = 3
	split.Resume = filepath.Join(split.Out, configs.StateFile)
	b, res := train(t, split)
	if len(res) != 2 || res[0].Epoch != 2 {
		t.Fatalf("resumed run reported %+v", res)
	}
	for i := range a.Params().Flat {
		if a.Params().Flat[i] != b.Params().Flat[i] {
			t.Fatalf("parameter %d: %v uninterrupted, %v resumed", i, a.Params().Flat[i], b.Params().Flat[i])
		}
	}
}

func TestTrainerErrors(t *testing.T) {
	data := synthData(t, 4)
	cases := []struct {
		name string
		edit func(*configs.Job)
		want string
	}{
		{"missing data", func(c *configs.Job) { c.Data = filepath.Join(c.Data, "nope") }, "nope"},
		{"bad variant", func(c *configs.Job) { c.Variant = "huge" }, "--variant"},
		{"bad lr", func(c *configs.Job) { c.LR = -1 }, "--lr"},
		{"zero epochs", func(c *configs.Job) { c.Epochs = 0 }, "--epochs"},
		{"bad resume", func(c *configs.Job) { c.Resume = filepath.Join(c.Data, "train", "circle", "circle_0000.png") }, "circle_0000.png"},
		{"unwritable out", func(c *configs.Job) {
			f := filepath.Join(t.TempDir(), "file")
			os.WriteFile(f, nil, 0o644)
			c.Out = filepath.Join(f, "out")
		}, "output folder"},
	}
	for _, c := range cases {
		cfg := tinyConfig(data, t.TempDir())
		c.edit(&cfg)
		_, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), Controller{}, zap.NewNop())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to mention %q", c.name, err, c.want)
		}
	}
	cfg := tinyConfig(data, t.TempDir())
	cfg.Batch = 15
	if _, err := NewTrainer(cfg, fakeWorld{n: 2}, alexnet.CPUCompute(), Controller{}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "not divisible") {
		t.Errorf("batch 15 over 2 ranks: %v", err)
	}
}

// fakeWorld is a world of n in which this rank does all the work.
type fakeWorld struct {
	Solo
	n int
}

func (f fakeWorld) World() int { return f.n }

func TestWorkerBatchOption(t *testing.T) {
	cfg := configs.DefaultJob()
	if cfg.WorkerBatch(4) != 8 || cfg.CheckWorld(3) == nil {
		t.Errorf("global batch 32: %d per worker of 4; over 3: %v", cfg.WorkerBatch(4), cfg.CheckWorld(3))
	}
	cfg.WorkerBatchSize = 5
	if cfg.WorkerBatch(3) != 5 || cfg.CheckWorld(3) != nil {
		t.Errorf("worker_batch 5: %d per worker, %v", cfg.WorkerBatch(3), cfg.CheckWorld(3))
	}
}

// A NaN stops the job before Adam, naming the step and the rank; with
// skip_nonfinite the step is skipped and the parameters stay as they were.
func TestNonFiniteGradient(t *testing.T) {
	data := synthData(t, 4)
	for _, c := range []struct{ skip, overlap bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		skip := c.skip
		cfg := tinyConfig(data, t.TempDir())
		cfg.Epochs, cfg.SkipNonFinite, cfg.Ring.Overlap = 1, skip, c.overlap
		var res []EpochResult
		ctl := Controller{EpochDone: func(_ context.Context, r EpochResult) error { res = append(res, r); return nil }}
		tr, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), ctl, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		w, _ := tr.Params().View("classifier.6.weight")
		w[0] = float32(math.NaN())
		before := append([]float32(nil), tr.Params().Flat...)
		err = tr.Run(context.Background())
		tr.Close()
		if !skip {
			if err == nil || !strings.Contains(err.Error(), "epoch 1 step 1: non-finite loss or gradient from rank [0]") {
				t.Errorf("stop mode: %v", err)
			}
		} else {
			if err != nil || len(res) != 1 || res[0].Skipped != 2 {
				t.Fatalf("skip mode: %v %+v", err, res)
			}
			if tr.adam.Step != 0 {
				t.Errorf("Adam took %d steps", tr.adam.Step)
			}
		}
		for i := range before {
			if math.Float32bits(before[i]) != math.Float32bits(tr.Params().Flat[i]) {
				t.Fatalf("skip=%v: parameter %d changed", skip, i)
			}
		}
	}
}

// recordingWorld is rank 0 of a world of two whose peer does nothing: it
// records the lengths its gradient all-reduces were given, started early
// ("start") or after the backward pass. (A world of one all-reduces nothing.)
type recordingWorld struct {
	Solo
	calls *[]string
}

func (recordingWorld) World() int { return 2 }

func (w recordingWorld) AllReduceAvg(_ context.Context, v []float32) error {
	*w.calls = append(*w.calls, fmt.Sprintf("after %d", len(v)))
	return nil
}

func (w recordingWorld) StartAllReduceAvg(_ context.Context, v []float32) func() error {
	*w.calls = append(*w.calls, fmt.Sprintf("start %d", len(v)))
	return func() error { return nil }
}

// allReduces trains one epoch of cfg on a recording world of two and returns
// the all-reduces it asked for, in order, with the parameters it trained.
func allReduces(t *testing.T, cfg configs.Job, compute alexnet.Compute) (string, *alexnet.Params) {
	t.Helper()
	var calls []string
	tr, err := NewTrainer(cfg, recordingWorld{calls: &calls}, compute, Controller{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	return strings.Join(calls, ", "), tr.Params()
}

// With ring.overlap each step starts the classifier's all-reduce during the
// backward pass and the rest (with the flags) after it; without, the whole
// gradient goes after it.
func TestOverlapSplitsTheAllReduce(t *testing.T) {
	data := synthData(t, 4) // 20 images: 10 per rank, 2 steps of 8
	for _, overlap := range []bool{false, true} {
		cfg := tinyConfig(data, t.TempDir())
		cfg.Epochs, cfg.Ring.Overlap = 1, overlap
		got, params := allReduces(t, cfg, alexnet.CPUCompute())
		n, from := len(params.Flat), 0
		for _, l := range params.Layout {
			if l.Name == "classifier.1.weight" {
				from = l.Offset
			}
		}
		step := []string{fmt.Sprintf("after %d", 2+n)} // a flag per rank, then the gradient
		if overlap {
			step = []string{fmt.Sprintf("start %d", n-from), fmt.Sprintf("after %d", 2+from)}
		}
		if want := strings.Join(append(step, step...), ", "); got != want {
			t.Errorf("overlap %v: all-reduces %s, want %s", overlap, got, want)
		}
	}
}

// A validation slot the loader filled with a replacement (for an unreadable
// image) is not scored: the accuracy is over the images read, each once.
func TestScoreSkipsReplacedImages(t *testing.T) {
	// Three samples of two classes; the second was unreadable and replaced by
	// the third, so the third appears twice.
	b := &sharding.Batch{Count: 3, Labels: []int{0, 1, 1}, Indices: []int{10, 12, 12}}
	logits := []float32{
		1, 0, // sample 10: class 0, right
		0, 1, // the replacement of 11: would be right, must not count
		1, 0, // sample 12: class 0, wrong
	}
	if c, n := score(logits, 2, b, 10); c != 1 || n != 2 {
		t.Errorf("score = %d correct of %d, want 1 of 2", c, n)
	}
}

// The vector a step all-reduces is the ranks' flags, then the gradient, in one
// buffer: a ring that grows within the room keeps it, one beyond gets a new
// one, and after the averaging only the ranks that flagged are culprits.
func TestStepVectorLayout(t *testing.T) {
	const n = 5
	allocs := 0
	alloc := func(k int) ([]float32, error) { allocs++; return make([]float32, k), nil }
	var r ringVector
	if err := r.fit(3, n, alloc); err != nil {
		t.Fatal(err)
	}
	if v := r.view(1); v.Flags() != nil || v.Grad() != nil || v.bytes() != 0 {
		t.Errorf("a world of one's vector holds %d flags, %d gradient values", len(v.Flags()), len(v.Grad()))
	}
	v := r.view(3)
	if len(v.Flags()) != 3 || len(v.Grad()) != n || &v.through(0)[2] != &v.Flags()[2] || &v.through(1)[3] != &v.Grad()[0] || v.bytes() != 4*(3+n) {
		t.Fatalf("world 3: %d flags, %d gradient values, not adjacent in one buffer", len(v.Flags()), len(v.Grad()))
	}
	grad := v.Grad()
	if err := r.fit(16, n, alloc); err != nil || allocs != 1 || &r.view(16).Grad()[0] != &grad[0] {
		t.Errorf("growing to 16 ranks within the room: %v, %d allocations, same gradient %v", err, allocs, &r.view(16).Grad()[0] == &grad[0])
	}
	if err := r.fit(17, n, alloc); err != nil || allocs != 2 || len(r.view(17).Flags()) != 17 {
		t.Errorf("growing to 17 ranks: %v, %d allocations", err, allocs)
	}
	v = r.view(4)
	v.Flags()[0] = 1 // a stale flag from an earlier step
	v.flag(2, false)
	for i := range v.Flags() { // the mean over the ring of one flagging rank
		v.Flags()[i] /= 4
	}
	if got := v.culprits(); len(got) != 1 || got[0] != 2 {
		t.Errorf("culprits %v, want [2]", got)
	}
	v.flag(2, true)
	if got := v.culprits(); got != nil {
		t.Errorf("culprits %v after a finite step, want none", got)
	}
}

// The trainer times a step's phases in order, one after the other; forward
// and backward split where the backend computed the loss (alexnet.Hooks).
func TestStepPhasesFollowOneAnother(t *testing.T) {
	ctx := context.Background()
	cfg := tinyConfig(synthData(t, 4), t.TempDir())
	tr, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), Controller{}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	plan, err := tr.epochPlan(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	shard, err := plan.Shard(0)
	if err != nil {
		t.Fatal(err)
	}
	loader, err := sharding.NewLoader(ctx, tr.train, shard, sharding.LoaderConfig{Side: tr.params.Spec.Input, Batch: tr.batch, Goroutines: 1}, tr.badTrain)
	if err != nil {
		t.Fatal(err)
	}
	defer loader.Close()
	rec, err := tr.step(ctx, loader, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{PhaseDataWait, PhaseForward, PhaseBackward, PhaseAllReduce, PhaseOptimizer}
	if rec.n != len(want) || !rec.reduced || rec.skipped || rec.images != tr.batch {
		t.Fatalf("step record: %d phases, reduced %v, skipped %v, %d images", rec.n, rec.reduced, rec.skipped, rec.images)
	}
	end := rec.start
	for i, p := range rec.phases[:rec.n] {
		if p.name != want[i] || p.start.Before(end) || p.took < 0 {
			t.Errorf("phase %d: %s from %v for %v; want %s from %v on", i, p.name, p.start.Sub(rec.start), p.took, want[i], end.Sub(rec.start))
		}
		end = p.start.Add(p.took)
	}
	fwd, bwd := rec.phases[1], rec.phases[2]
	if fwd.took <= 0 || bwd.took <= 0 || !fwd.start.Add(fwd.took).Equal(bwd.start) {
		t.Errorf("forward %v, backward %v, backward starting %v after the forward's end; want both positive, split at one instant",
			fwd.took, bwd.took, bwd.start.Sub(fwd.start.Add(fwd.took)))
	}
}
