package coordinator

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
)

// saveState writes the training state of a job that has trained epochs, its
// best validation accuracy best, into c's --out.
func saveState(t *testing.T, out string, epochs int, best float64) {
	t.Helper()
	spec, err := alexnet.NewSpec("tiny", 2)
	if err != nil {
		t.Fatal(err)
	}
	p := alexnet.NewParams(spec)
	p.Init(1)
	adam, err := alexnet.NewAdam(alexnet.DefaultAdam(), len(p.Flat))
	if err != nil {
		t.Fatal(err)
	}
	st := &alexnet.TrainState{Params: p, Adam: adam, Epoch: epochs, BestAcc: best, Seed: 2, RNGState: []byte{1, 2, 3}, Classes: []string{"a", "b"}}
	if err := alexnet.SaveTrainState(filepath.Join(out, configs.StateFile), st); err != nil {
		t.Fatal(err)
	}
}

// resumed is a coordinator resuming the job in the --out of c (a test
// coordinator's), with epochs epochs.
func resumed(t *testing.T, c *Coordinator, epochs int) (*Coordinator, *bytes.Buffer, error) {
	t.Helper()
	cfg := c.cfg
	cfg.Job.Epochs, cfg.Resume = epochs, true
	var out bytes.Buffer
	r, err := New(cfg, zap.NewNop(), &out)
	return r, &out, err
}

// F7: a coordinator started again (--resume, --auto-resume) after its job
// trained every epoch says the job is done and exits 0 (Run returns nil
// without waiting for workers); it used to refuse the state ("has already
// trained 2 of 2 epochs").
func TestResumeOfAFinishedJobIsDone(t *testing.T) {
	c, _, _ := newTestCoordinator(t, 2)
	dir := c.cfg.Job.Out
	writeFile(t, filepath.Join(dir, configs.JobIDFile), "job-done\n")
	if err := writeCurves(dir, []epochRow{{Epoch: 1, TrainLoss: 1, ValAccuracy: 0.5, World: 2, WallSeconds: 3}, {Epoch: 2, TrainLoss: 0.8, ValAccuracy: 0.75, World: 2, WallSeconds: 65}}); err != nil {
		t.Fatal(err)
	}
	saveState(t, dir, 2, 0.75)
	r, out, err := resumed(t, c, 2)
	if err != nil {
		t.Fatalf("--resume of a finished job: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Run(ctx, func(string) { t.Error("a finished job started its workers") }); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := out.String(); !strings.Contains(got, "Job job-done is done") || !strings.Contains(got, "Epoch 2/2 - Train loss: 0.8000 - Val Accuracy: 0.7500") || !strings.Contains(got, "Finished Training in 1m5s: best Val Accuracy 0.7500 at epoch 2") {
		t.Errorf("printed:\n%s", got)
	}
}

// A coordinator killed after the last epoch's state and before its row: the
// one started again writes the row from the state and says the job is done.
func TestResumeAfterTheLastStateWritesItsRow(t *testing.T) {
	c, _, _ := newTestCoordinator(t, 2)
	dir := c.cfg.Job.Out
	writeFile(t, filepath.Join(dir, configs.JobIDFile), "job-last\n")
	if err := writeCurves(dir, []epochRow{{Epoch: 1, TrainLoss: 1, ValAccuracy: 0.5, World: 2, WallSeconds: 3}}); err != nil {
		t.Fatal(err)
	}
	saveState(t, dir, 2, 0.5) // epoch 2 was no better
	r, out, err := resumed(t, c, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	rows, err := readCurves(dir, 10)
	if err != nil || len(rows) != 2 || rows[1].Epoch != 2 || !math.IsNaN(rows[1].ValAccuracy) || !math.IsNaN(rows[1].TrainLoss) {
		t.Errorf("rows %+v (%v), want epoch 2's with what is unknown NaN", rows, err)
	}
	if got := out.String(); !strings.Contains(got, "Epoch 2/2 - Train loss: NaN") || !strings.Contains(got, "best Val Accuracy 0.5000 at epoch 1") {
		t.Errorf("printed:\n%s", got)
	}
}

// F3: a --local coordinator killed after rank 0 wrote epoch 2's state and
// before epoch 2's row: its workers died with it, so nobody reports epoch 2
// again. Once the resumed job trains epoch 3, the row of epoch 2 is written
// from what the state tells (NaN for the unknown); the row used to be lost
// for good.
func TestResumedJobWritesTheRowNobodyReportedAgain(t *testing.T) {
	c, _, _ := newTestCoordinator(t, 2)
	dir := c.cfg.Job.Out
	writeFile(t, filepath.Join(dir, configs.JobIDFile), "job-lost\n")
	if err := writeCurves(dir, []epochRow{{Epoch: 1, TrainLoss: 1, ValAccuracy: 0.5, World: 2, WallSeconds: 3}}); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-10 * time.Second)
	os.Chtimes(filepath.Join(dir, configs.MetricsFile), past, past) // epoch 2 took 10 s
	saveState(t, dir, 2, 0.75)                                      // epoch 2 was the best
	r, _, err := resumed(t, c, 4)
	if err != nil {
		t.Fatal(err)
	}
	s := &controlService{c: r}
	plans := register(t, r, s, "w-a", "w-b")
	if p := plans["w-a"]; p.Epoch != 2 {
		t.Fatalf("the resumed plan starts at epoch %d, want 2", p.Epoch)
	}
	job := plans["w-a"].JobId
	// The new processes ask for epoch 3's shard (0-based 2): nobody reports
	// epoch 2 any more.
	if _, err := s.EpochShard(context.Background(), &controlpb.EpochRequest{JobId: job, Rank: 0, Epoch: 2, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	rows, err := readCurves(dir, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[1].Epoch != 2 || rows[1].ValAccuracy != 0.75 || !math.IsNaN(rows[1].TrainLoss) || !math.IsNaN(rows[1].ImagesPerS) ||
		rows[1].World != 2 || math.Abs(rows[1].WallSeconds-13) > 1 {
		t.Fatalf("metrics.csv rows %+v, want epoch 2's from the state", rows)
	}
	// Epoch 3 reported: its row follows, once; the best epoch is 2.
	for rank := range 2 {
		go s.Report(context.Background(), &controlpb.EpochReport{JobId: job, Rank: int32(rank), Epoch: 3, TrainLoss: 0.5, ValAccuracy: 0.5, Checksum: 7, Images: 6, Generation: 1})
	}
	waitUntil(t, r, func() bool { return r.core.verdicts[3] != nil })
	rows, _ = readCurves(dir, 10)
	var epochs []int
	for _, row := range rows {
		epochs = append(epochs, row.Epoch)
	}
	if len(epochs) != 3 || epochs[2] != 3 || rows[2].WallSeconds < rows[1].WallSeconds {
		t.Errorf("rows %+v", rows)
	}
	if r.core.summary.bestEpoch != 2 || r.core.summary.bestAcc != 0.75 {
		t.Errorf("best: epoch %d at %v, want epoch 2 at 0.75", r.core.summary.bestEpoch, r.core.summary.bestAcc)
	}
}

// The workers that survived their coordinator report the lost epoch again:
// its row is theirs, and no second one is written from the state.
func TestResumedJobTakesTheRowReportedAgain(t *testing.T) {
	c, _, _ := newTestCoordinator(t, 2)
	dir := c.cfg.Job.Out
	writeFile(t, filepath.Join(dir, configs.JobIDFile), "job-again\n")
	if err := writeCurves(dir, []epochRow{{Epoch: 1, TrainLoss: 1, ValAccuracy: 0.5, World: 2, WallSeconds: 3}}); err != nil {
		t.Fatal(err)
	}
	saveState(t, dir, 2, 0.75)
	r, _, err := resumed(t, c, 4)
	if err != nil {
		t.Fatal(err)
	}
	s := &controlService{c: r}
	plans := register(t, r, s, "w-a", "w-b")
	job := plans["w-a"].JobId
	reformAll := func(epoch int32) {
		done := make(chan struct{}, 2)
		for rank := range 2 {
			go func() {
				s.Report(context.Background(), &controlpb.EpochReport{JobId: job, Rank: int32(rank), Epoch: epoch, TrainLoss: 0.25, ValAccuracy: 0.75, Best: true, Checksum: 7, Images: 6, Generation: 1})
				done <- struct{}{}
			}()
		}
		<-done
		<-done
	}
	reformAll(2)
	if _, err := s.EpochShard(context.Background(), &controlpb.EpochRequest{JobId: job, Rank: 0, Epoch: 2, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	rows, _ := readCurves(dir, 10)
	if len(rows) != 2 || rows[1].TrainLoss != 0.25 {
		t.Errorf("rows %+v, want epoch 2's as reported again", rows)
	}
}
