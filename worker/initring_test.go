package worker

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
)

// When the first ring does not open, the ring that replaces it starts the job
// afresh: the rank whose state the others take reads --init, even when it is
// not rank 0 there, and the frozen features that rank 0 saves are the file's,
// not the seed's.
func TestInitSurvivesAFirstRingThatDoesNotOpen(t *testing.T) {
	bogusAddr := bogusPeer(t)

	tj := newTestJob(t)
	path, src := pretrained(t)
	tj.cfg.Init, tj.cfg.Freeze = path, "features"
	names := []string{"w0", "w1"}
	var mu sync.Mutex
	addrs := map[string]string{}
	asked := map[string]bool{}
	allAsked := make(chan struct{})
	f := &fakeControl{
		register: func(_ context.Context, r *controlpb.RegisterRequest) (*controlpb.JobPlan, error) {
			mu.Lock()
			addrs[r.Name] = r.RingAddr
			mu.Unlock()
			return tj.plan(t, 1, r.RingAddr, bogusAddr), nil
		},
		epochShard: func(_ context.Context, r *controlpb.EpochRequest) (*controlpb.Shard, error) {
			s := tj.shard(r)
			s.World = 2
			return s, nil
		},
		report: func(context.Context, *controlpb.EpochReport) (*controlpb.ReportReply, error) {
			return &controlpb.ReportReply{}, nil
		},
		// Once both have reported their first ring lost, the next one puts
		// w0 at rank 1 and takes its state.
		reform: func(ctx context.Context, r *controlpb.ReformRequest) (*controlpb.JobPlan, error) {
			mu.Lock()
			if r.Generation != 1 || asked[r.Name] {
				mu.Unlock()
				return nil, errors.New("only the first ring is re-formed, once per worker")
			}
			asked[r.Name] = true
			if len(asked) == len(names) {
				close(allAsked)
			}
			mu.Unlock()
			select {
			case <-allAsked:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			mu.Lock()
			defer mu.Unlock()
			p := tj.plan(t, 2, addrs["w1"], addrs["w0"])
			p.StateRoot = 1
			if r.Name == "w0" {
				p.Rank = 1
			}
			return p, nil
		},
	}
	gossip := gossipCoordinator(t, serveControl(t, f, nil))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // the defects this catches may hang
	defer cancel()
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			jc := joinConfig(gossip)
			jc.Name, jc.CoordinatorGrace = name, 0
			errs[i] = RunJoined(ctx, jc, zap.NewNop())
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("a worker exited: %v", err)
	}
	got, _, err := alexnet.LoadModel(filepath.Join(tj.cfg.Out, configs.BestFile))
	if err != nil {
		t.Fatal(err)
	}
	from := got.Spec.ClassifierOffset()
	if !slices.Equal(got.Flat[:from], src.Flat[:from]) {
		t.Error("the frozen features rank 0 saved are not the --init file's")
	}
}
