package coordinator

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
)

// reportAll sends every rank's report of epoch (1-based) in ring gen and
// returns once all have their verdict.
func reportAll(t *testing.T, s *controlService, job string, world, gen, epoch int) {
	t.Helper()
	var wg sync.WaitGroup
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := s.Report(context.Background(), &controlpb.EpochReport{JobId: job, Rank: int32(r), Epoch: int32(epoch), Checksum: 5, Images: 6, Generation: int32(gen)})
			if err != nil || rep.Stop || rep.Reform {
				t.Errorf("rank %d's verdict of epoch %d: %+v %v", r, epoch, rep, err)
			}
		}()
	}
	wg.Wait()
}

// restartAll registers the named workers again at new addresses, as processes
// restarted after their ring died, and returns their plans (or errors).
func restartAll(t *testing.T, c *Coordinator, s *controlService, job string, names ...string) (map[string]*controlpb.JobPlan, map[string]error) {
	t.Helper()
	plans, errs := map[string]*controlpb.JobPlan{}, map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range names {
		addr := "127.0.0.1:2" + n[len(n)-1:]
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p, err := s.Register(ctx, &controlpb.RegisterRequest{JobId: job, Name: n, RingAddr: addr})
			mu.Lock()
			plans[n], errs[n] = p, err
			mu.Unlock()
		}()
		// One at a time, as they come back: the first begins the
		// re-formation, which waits for the second's old self.
		waitUntil(t, c, func() bool { return c.core.workers[n].RingAddr == addr || c.core.failed != nil })
	}
	wg.Wait()
	return plans, errs
}

// Every worker of a ring dies within a second (the fault-injection test
// killed all three in one epoch): no survivor holds the state, and the
// workers that come back go on from the state on disk rather than failing
// the job. The epoch judged after the last saved state is trained again, and
// its row written once.
func TestRingWithNoSurvivorGoesOnFromTheStateOnDisk(t *testing.T) {
	c, s, out := newTestCoordinator(t, 2, func(cfg *Config) { cfg.Job.Epochs = 4 })
	plans := register(t, c, s, "w-a", "w-b")
	job := plans["w-a"].JobId
	reportAll(t, s, job, 2, 1, 1)
	saveState(t, c.cfg.Job.Out, 1, 0.5)
	reportAll(t, s, job, 2, 1, 2) // judged; its state never saved

	next, errs := restartAll(t, c, s, job, "w-a", "w-b")
	for name, err := range errs {
		if err != nil {
			t.Fatalf("restarted %s: %v", name, err)
		}
	}
	state := filepath.Join(c.cfg.Job.Out, configs.StateFile)
	for name, p := range next {
		cfg, err := planJob(p)
		if err != nil {
			t.Fatal(err)
		}
		if p.Generation != 2 || p.World != 2 || p.Epoch != 1 || p.StateRoot != 0 || cfg.Resume != state {
			t.Errorf("%s's plan: generation %d world %d epoch %d root %d resume %q; want 2 2 1 0 %q", name, p.Generation, p.World, p.Epoch, p.StateRoot, cfg.Resume, state)
		}
	}
	rows, err := readCurves(c.cfg.Job.Out, 10)
	if err != nil || len(rows) != 1 || rows[0].Epoch != 1 {
		t.Fatalf("metrics.csv after the restart: %+v %v; want epoch 1's row only", rows, err)
	}
	reportAll(t, s, job, 2, 2, 2)
	if rows, err = readCurves(c.cfg.Job.Out, 10); err != nil || len(rows) != 2 || rows[1].Epoch != 2 {
		t.Errorf("metrics.csv after epoch 2 again: %+v %v", rows, err)
	}
	if n := strings.Count(out.String(), "Epoch 2/4 - "); n != 2 {
		t.Errorf("epoch 2's line printed %d times, want 2 (trained twice):\n%s", n, out)
	}
}

// With no survivor and no state file this coordinator can read, an epoch
// already judged would be lost: the job fails, naming the file, rather than
// start again from scratch. Before any epoch ended there is nothing to lose,
// and the ring starts the job again.
func TestRingWithNoSurvivorAndNoStateFile(t *testing.T) {
	t.Run("an epoch judged", func(t *testing.T) {
		c, s, _ := newTestCoordinator(t, 2, func(cfg *Config) { cfg.Job.Epochs = 4 })
		plans := register(t, c, s, "w-a", "w-b")
		job := plans["w-a"].JobId
		reportAll(t, s, job, 2, 1, 1)
		_, errs := restartAll(t, c, s, job, "w-a", "w-b")
		c.mu.Lock()
		failed := c.core.failed
		c.mu.Unlock()
		if failed == nil || !strings.Contains(failed.Error(), "cannot read") || !strings.Contains(failed.Error(), configs.StateFile) {
			t.Errorf("the job's error: %v; want the state file it cannot read", failed)
		}
		for name, err := range errs {
			if err == nil {
				t.Errorf("%s joined a failed job", name)
			}
		}
	})
	t.Run("none judged", func(t *testing.T) {
		c, s, _ := newTestCoordinator(t, 2)
		plans := register(t, c, s, "w-a", "w-b")
		next, errs := restartAll(t, c, s, plans["w-a"].JobId, "w-a", "w-b")
		for name, p := range next {
			if errs[name] != nil || p.Generation != 2 || p.Epoch != 0 || strings.Contains(p.GetSettings().GetResume(), configs.StateFile) {
				t.Errorf("%s: %+v %v; want generation 2 from the start, no state file", name, p, errs[name])
			}
		}
	})
}
