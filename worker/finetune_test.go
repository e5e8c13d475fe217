package worker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/allreduce"
	"github.com/alexring/alexring/configs"
)

// pretrained writes a tiny model of 10 classes as a state_dict: what
// fine-tuning on the 5 synthetic classes starts from.
func pretrained(t *testing.T) (string, *alexnet.Params) {
	t.Helper()
	spec, err := alexnet.NewSpec("tiny", 10)
	if err != nil {
		t.Fatal(err)
	}
	p := alexnet.NewParams(spec)
	p.Init(1234)
	path := filepath.Join(t.TempDir(), "pretrained.safetensors")
	if err := alexnet.SaveModel(path, p, alexnet.ModelMeta{}); err != nil {
		t.Fatal(err)
	}
	return path, p
}

// With the features frozen each step all-reduces the flags and the
// classifier's gradient, nothing else, with ring.overlap or without.
func TestFreezeAllReducesTheClassifierOnly(t *testing.T) {
	data := synthData(t, 4) // 20 images: 10 per rank, 2 steps of 8
	for _, overlap := range []bool{false, true} {
		cfg := tinyConfig(data, t.TempDir())
		cfg.Epochs, cfg.Ring.Overlap, cfg.Freeze = 1, overlap, "features"
		got, params := allReduces(t, cfg, alexnet.CPUCompute())
		n, from := len(params.Flat), params.Spec.ClassifierOffset()
		step := fmt.Sprintf("after %d", 2+n-from) // a flag per rank, then the classifier's gradient
		if want := step + ", " + step; got != want {
			t.Errorf("overlap %v: all-reduces %s, want %s", overlap, got, want)
		}
	}
}

// loggedRing is the real ring, counting the floats each all-reduce is given.
type loggedRing struct {
	*allreduce.Ring
	mu     sync.Mutex
	floats []int
}

func (r *loggedRing) AllReduceAvg(ctx context.Context, v []float32) error {
	r.mu.Lock()
	r.floats = append(r.floats, len(v))
	r.mu.Unlock()
	return r.Ring.AllReduceAvg(ctx, v)
}

// Two ranks on a real ring fine-tune from a file that only rank 0 can read:
// rank 0 takes its tensors by name, draws the last layer (10 classes in the
// file, 5 here) from the seed and logs it, the broadcast gives rank 1 the
// same start, and with the features frozen they stay the file's bits while
// the classifier trains, the same on both ranks.
func TestFineTuneOnARing(t *testing.T) {
	data := synthData(t, 4)
	path, src := pretrained(t)
	log := zap.NewNop()
	var nodes []*allreduce.Node
	var peers []string
	for range 2 {
		n, err := allreduce.Listen("127.0.0.1:0", nil, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nodes, peers = append(nodes, n), append(peers, n.Addr)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	trainers := make([]*Trainer, 2)
	rings := make([]*loggedRing, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for rank := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			rcfg := allreduce.DefaultConfig()
			rcfg.RingID, rcfg.Rank, rcfg.World, rcfg.Peers = "finetune", rank, 2, peers
			ring, err := allreduce.Open(ctx, nodes[rank].Service, rcfg, log)
			if err != nil {
				errs[rank] = err
				return
			}
			rings[rank] = &loggedRing{Ring: ring}
			cfg := tinyConfig(data, t.TempDir())
			cfg.Epochs, cfg.Freeze, cfg.Init = 2, "features", path
			l := log
			if rank == 0 {
				l = zap.New(core)
			} else {
				cfg.Init = filepath.Join(t.TempDir(), "only-on-rank-0.safetensors") // never read
			}
			tr, err := NewTrainer(cfg, rings[rank], alexnet.CPUCompute(), Controller{}, l)
			if err != nil {
				errs[rank] = err
				ring.Close()
				return
			}
			trainers[rank] = tr
			if errs[rank] = tr.SyncState(ctx, 0); errs[rank] == nil {
				errs[rank] = tr.Run(ctx)
			}
			ring.Barrier(ctx)
		}()
	}
	wg.Wait()
	for rank, tr := range trainers {
		if tr != nil {
			t.Cleanup(tr.Close)
			t.Cleanup(func() { rings[rank].Close() })
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	a, b := trainers[0].Params(), trainers[1].Params()
	if !slices.Equal(a.Flat, b.Flat) {
		t.Fatal("the ranks' parameters differ")
	}
	from := a.Spec.ClassifierOffset()
	if !slices.Equal(a.Flat[:from], src.Flat[:from]) {
		t.Error("the frozen features are not the file's")
	}
	w4, _ := a.View("classifier.4.weight")
	s4, _ := src.View("classifier.4.weight")
	if slices.Equal(w4, s4) {
		t.Error("classifier.4 did not train")
	}
	n := len(a.Flat) - from + 2
	for rank, r := range rings {
		for _, f := range r.floats {
			if f != n {
				t.Errorf("rank %d all-reduced %d floats, want %d (the flags and the classifier's gradient)", rank, f, n)
				break
			}
		}
		if len(r.floats) == 0 {
			t.Errorf("rank %d all-reduced nothing", rank)
		}
	}
	entries := logs.FilterMessage("initialised from --init").All()
	if len(entries) != 1 {
		t.Fatalf("%d \"initialised from --init\" log lines on rank 0, want 1", len(entries))
	}
	reinit := fmt.Sprint(entries[0].ContextMap()["reinitialised"])
	if !strings.Contains(reinit, "classifier.6.weight: [10 64] in the file, [5 64] here") || !strings.Contains(reinit, "classifier.6.bias") {
		t.Errorf("the log lists %s as re-initialised, want classifier.6's weight and bias", reinit)
	}
}

// A file without the convolutions cannot be frozen from; a resume wins over
// --init (the file is not even read).
func TestInitErrorsAndResume(t *testing.T) {
	data := synthData(t, 4)
	// A classifier alone: the tiny model's last layer, none of its features.
	tiny, err := alexnet.NewSpec("tiny", 5)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"classifier.6.weight", "classifier.6.bias"}
	tensors := map[string]alexnet.STTensor{
		names[0]: alexnet.F32Tensor(make([]float32, 5*tiny.Hidden), 5, tiny.Hidden),
		names[1]: alexnet.F32Tensor(make([]float32, 5), 5),
	}
	head := filepath.Join(t.TempDir(), "head.safetensors")
	if err := alexnet.WriteSafetensors(head, names, tensors, nil); err != nil {
		t.Fatal(err)
	}
	cfg := tinyConfig(data, t.TempDir())
	cfg.Epochs, cfg.Init, cfg.Freeze = 1, head, "features"
	if _, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), Controller{}, zap.NewNop()); !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), "--freeze features keeps the convolutions") {
		t.Errorf("freezing features the file lacks: %v", err)
	}
	cfg.Freeze = "classifier"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--freeze") {
		t.Errorf("--freeze classifier: %v", err)
	}

	cfg = tinyConfig(data, t.TempDir())
	cfg.Epochs = 1
	first, _ := train(t, cfg)
	cfg.Epochs, cfg.Resume, cfg.Init = 2, filepath.Join(cfg.Out, configs.StateFile), filepath.Join(t.TempDir(), "missing.pth")
	tr, err := NewTrainer(cfg, Solo{}, alexnet.CPUCompute(), Controller{}, zap.NewNop())
	if err != nil {
		t.Fatalf("a resume with --init: %v", err)
	}
	defer tr.Close()
	if !slices.Equal(tr.Params().Flat, first.Params().Flat) {
		t.Error("the resumed parameters are not the state's")
	}
}
