package coordinator

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/alexring/alexring/internal/cluster/controlpb"
)

// gauge reads one of the coordinator's series from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			m := f.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no series %s", name)
	return 0
}

// Issue 19, item 11: an epoch boundary that waits on a worker that has not
// reported (its link to the coordinator cut, say) is logged once, naming it
// and how long the ranks that reported wait at most, and shows in the
// metrics; so is an epoch overdue with no report at all.
func TestEpochBoundaryWaitIsLoggedAndMeasured(t *testing.T) {
	defer func(p, o time.Duration) { patience, overdueSlack = p, o }(patience, overdueSlack)
	patience, overdueSlack = 50*time.Millisecond, 300*time.Millisecond
	reg := prometheus.NewRegistry()
	c, s, _ := newTestCoordinator(t, 3, func(cfg *Config) { cfg.Job.Epochs, cfg.Metrics = 3, NewMetrics(reg) })
	obs, logs := observer.New(zap.InfoLevel)
	c.log = zap.New(obs)
	c.core.log = c.log
	plans := register(t, c, s, "w-a", "w-b", "w-c")
	job := plans["w-a"].JobId

	report := func(rank, epoch int, deadline time.Duration, wg *sync.WaitGroup) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			if _, err := s.Report(ctx, &controlpb.EpochReport{JobId: job, Rank: int32(rank), Epoch: int32(epoch), Checksum: 7, Images: 4, Generation: 1}); err != nil {
				t.Errorf("rank %d's report of epoch %d: %v", rank, epoch, err)
			}
		}()
	}
	var wg sync.WaitGroup
	report(1, 1, 20*time.Second, &wg)
	report(2, 1, 10*time.Second, &wg)
	const msg = "epoch boundary waiting for workers that have not reported"
	waitFor := func(msg string, n int) []observer.LoggedEntry {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			c.mu.Lock() // the core logs while it takes an event, under c.mu
			logged, changed := logs.FilterMessage(msg).Len(), c.changed
			c.mu.Unlock()
			if logged >= n {
				return logs.FilterMessage(msg).All()
			}
			select {
			case <-changed:
			case <-deadline:
				t.Fatalf("no %q logged; logs: %v", msg, logs.All())
			}
		}
	}
	e := waitFor(msg, 1)[0].ContextMap()
	if w, _ := e["waiting_for"].([]any); len(w) != 1 || w[0] != "w-a (rank 0)" || e["reported"] != int64(2) || e["epoch"] != int64(1) {
		t.Errorf("the wait logged: %v", e)
	}
	if at, _ := e["at_most"].(time.Duration); at < 5*time.Second || at > 10*time.Second {
		t.Errorf("at most %v, want the earliest reporter's deadline (under 10 s)", e["at_most"])
	}
	if n := gauge(t, reg, "alexring_epoch_waiting_ranks"); n != 1 {
		t.Errorf("waiting ranks %v, want 1", n)
	}
	if d := gauge(t, reg, "alexring_epoch_wait_seconds"); d <= 0 {
		t.Errorf("wait seconds %v while waiting", d)
	}
	report(0, 1, 20*time.Second, &wg)
	wg.Wait()
	waitFor("epoch boundary wait over", 1)
	if n, d := gauge(t, reg, "alexring_epoch_waiting_ranks"), gauge(t, reg, "alexring_epoch_wait_seconds"); n != 0 || d != 0 {
		t.Errorf("after the verdict: waiting ranks %v, wait %v s", n, d)
	}
	if total := gauge(t, reg, "alexring_epoch_wait_seconds_total"); total < patience.Seconds() {
		t.Errorf("waited %v s in all", total)
	}
	if len(logs.FilterMessage(msg).All()) != 1 {
		t.Errorf("the wait was logged %d times, want once", len(logs.FilterMessage(msg).All()))
	}

	// Epoch 2: nobody reports (the coordinator is cut off). Past twice the
	// last epoch and the slack, that is logged too.
	e = waitFor(msg, 2)[1].ContextMap()
	if w, _ := e["waiting_for"].([]any); len(w) != 3 || e["reported"] != int64(0) || e["epoch"] != int64(2) {
		t.Errorf("the overdue epoch logged: %v", e)
	}
	if n := gauge(t, reg, "alexring_epoch_waiting_ranks"); n != 3 {
		t.Errorf("waiting ranks %v in the overdue epoch, want 3", n)
	}
}
