package coordinator

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
	"github.com/alexring/alexring/sharding"
)

// newTestCoordinator is a coordinator of workers over a tiny synthetic
// dataset; opts adjust its config.
func newTestCoordinator(t *testing.T, workers int, opts ...func(*Config)) (*Coordinator, *controlService, *bytes.Buffer) {
	t.Helper()
	data := t.TempDir()
	if err := sharding.Synthesize(data, sharding.SynthConfig{Train: 3, Val: 1, Size: 16, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	job, err := configs.Load("tiny")
	if err != nil {
		t.Fatal(err)
	}
	job.Data, job.Out, job.Batch = data, t.TempDir(), 12
	var out bytes.Buffer
	cfg := Config{Job: job, Workers: workers, WaitTimeout: time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := New(cfg, zap.NewNop(), &out)
	if err != nil {
		t.Fatal(err)
	}
	return c, &controlService{c: c}, &out
}

// register registers the named workers concurrently (Register blocks until the
// last of them starts the job) and returns their plans by name.
func register(t *testing.T, c *Coordinator, s *controlService, names ...string) map[string]*controlpb.JobPlan {
	t.Helper()
	plans := map[string]*controlpb.JobPlan{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := s.Register(context.Background(), &controlpb.RegisterRequest{Name: n, RingAddr: "127.0.0.1:1" + n[len(n)-1:], Device: "cpu"})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			plans[n] = p
			mu.Unlock()
		}()
	}
	wg.Wait()
	return plans
}

func TestRanksFollowSortedNames(t *testing.T) {
	c, s, _ := newTestCoordinator(t, 3)
	plans := register(t, c, s, "w-c", "w-a", "w-b")
	for name, rank := range map[string]int32{"w-a": 0, "w-b": 1, "w-c": 2} {
		p := plans[name]
		if p.Rank != rank || p.World != 3 || p.Peers[rank] != "127.0.0.1:1"+name[len(name)-1:] {
			t.Errorf("%s: %+v", name, p)
		}
	}
	// A worker of another job is refused, before or after the start.
	if _, err := s.Register(context.Background(), &controlpb.RegisterRequest{JobId: "job-other", Name: "x", RingAddr: "y"}); err == nil || !strings.Contains(err.Error(), `belongs to job "job-other"`) {
		t.Errorf("worker of another job: %v", err)
	}
	// The job has started: a late worker waits for the next epoch boundary;
	// a second worker of a name already in the ring is refused.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.Register(ctx, &controlpb.RegisterRequest{Name: "late", RingAddr: "x"}); !errors.Is(err, context.DeadlineExceeded) || c.core.joiners["late"] {
		t.Errorf("late worker: %v (still waiting: %v)", err, c.core.joiners["late"])
	}
	if _, err := s.Register(context.Background(), &controlpb.RegisterRequest{Name: "w-a", RingAddr: "127.0.0.1:1a"}); err == nil || !strings.Contains(err.Error(), "already in job") {
		t.Errorf("a second w-a: %v", err)
	}
	cfg, err := planJob(plans["w-a"])
	if err != nil || cfg.Variant != "tiny" {
		t.Errorf("config in the plan: %+v %v", cfg, err)
	}
}

func TestDivergedChecksumsStopTheJob(t *testing.T) {
	c, s, _ := newTestCoordinator(t, 2)
	plans := register(t, c, s, "a", "b")
	replies := make([]*controlpb.ReportReply, 2)
	var wg sync.WaitGroup
	for r, sum := range []uint64{0xaaaa, 0xbbbb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := s.Report(context.Background(), &controlpb.EpochReport{JobId: plans["a"].JobId, Rank: int32(r), Epoch: 1, Checksum: sum, Images: 4, Generation: plans["a"].Generation})
			if err != nil {
				t.Error(err)
			}
			replies[r] = rep
		}()
	}
	wg.Wait()
	for r, rep := range replies {
		if rep == nil || !rep.Stop || !strings.Contains(rep.Reason, "diverged after epoch 1") || !strings.Contains(rep.Reason, "rank 1 000000000000bbbb") {
			t.Errorf("rank %d: %+v", r, rep)
		}
	}
	if c.core.failed == nil {
		t.Error("the coordinator did not fail the job")
	}
}

func TestEpochLineAndFinish(t *testing.T) {
	c, s, out := newTestCoordinator(t, 2, func(cfg *Config) { cfg.Job.Epochs = 1 })
	plans := register(t, c, s, "a", "b")
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := s.Report(context.Background(), &controlpb.EpochReport{JobId: plans["a"].JobId, Rank: int32(r), Epoch: 1, Generation: plans["a"].Generation,
				Checksum: 7, Images: 4, TrainLoss: float64(1 + r), ValAccuracy: 0.75, Best: true})
			if err != nil || rep.Stop {
				t.Errorf("rank %d: %v %+v", r, err, rep)
			}
		}()
	}
	wg.Wait()
	if got := out.String(); got != "Epoch 1/1 - Train loss: 1.5000 - Val Accuracy: 0.7500\n" {
		t.Errorf("printed %q", got)
	}
	if !c.core.finished || c.core.summary.bestAcc != 0.75 {
		t.Errorf("finished %v best %v", c.core.finished, c.core.summary.bestAcc)
	}
	csv, err := os.ReadFile(filepath.Join(c.cfg.Job.Out, configs.MetricsFile))
	if err != nil || !strings.HasPrefix(string(csv), "epoch,train_loss,val_accuracy,images_per_s,wall_s,world_size\n1,1.5,0.75,") || !strings.HasSuffix(string(csv), ",2\n") {
		t.Errorf("metrics.csv: %q %v", csv, err)
	}
	f, err := os.Open(filepath.Join(c.cfg.Job.Out, configs.CurvesFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil || img.Bounds().Dx() < 400 {
		t.Errorf("training.png: %v %v", err, img)
	}
	if _, err := s.Report(context.Background(), &controlpb.EpochReport{JobId: "other", Rank: 0, Epoch: 1}); err == nil {
		t.Error("a report for another job was taken")
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := configs.Load("nope.yaml"); err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Errorf("missing config: %v", err)
	}
	bad := t.TempDir() + "/bad.yaml"
	writeFile(t, bad, "epochs: 3\nlearning_rate: 1\n")
	if _, err := configs.Load(bad); err == nil || !strings.Contains(err.Error(), "learning_rate") || !strings.Contains(err.Error(), bad) {
		t.Errorf("unknown key: %v", err)
	}
	job, _ := configs.Load("tiny")
	job.Data = t.TempDir()
	job.Batch = 8
	if _, err := New(Config{Job: job, Workers: 3}, zap.NewNop(), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "not divisible") {
		t.Errorf("batch 8 over 3 workers: %v", err)
	}
	if _, err := New(Config{Job: job, Workers: 2}, zap.NewNop(), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), job.Data) {
		t.Errorf("empty data folder: %v", err)
	}
}
