package coordinator

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alexring/alexring/internal/cluster/controlpb"
	"github.com/alexring/alexring/internal/cluster/membership"
)

// reformAll sends the named survivors' Reform calls concurrently (each blocks
// until the new ring is formed) and returns the replies by name.
func reformAll(t *testing.T, s *controlService, reqs ...*controlpb.ReformRequest) (map[string]*controlpb.JobPlan, map[string]error) {
	t.Helper()
	plans, errs := map[string]*controlpb.JobPlan{}, map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p, err := s.Reform(ctx, r)
			mu.Lock()
			plans[r.Name], errs[r.Name] = p, err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return plans, errs
}

// waitUntil waits until cond holds under the coordinator's lock, looking
// again after every event the coordinator takes.
func waitUntil(t *testing.T, c *Coordinator, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		ok, changed := cond(), c.changed
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatal("condition not reached in 10 s")
		}
	}
}

// inVirtualTime runs calls, which wait on the coordinator, and once ready
// holds moves clock on by d; it returns when calls does.
func inVirtualTime(t *testing.T, c *Coordinator, clock *virtualClock, ready func() bool, d time.Duration, calls func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		calls()
	}()
	waitUntil(t, c, ready)
	clock.Advance(d)
	<-done
}

func TestReformKeepsTheSurvivorsAndTheFurthestState(t *testing.T) {
	c, s, _ := newTestCoordinator(t, 3)
	plans := register(t, c, s, "w-a", "w-b", "w-c")
	job := plans["w-a"].JobId
	if plans["w-a"].Generation != 1 || plans["w-a"].BatchPerRank != 4 {
		t.Fatalf("first plan: %+v", plans["w-a"])
	}
	// w-b is gone from the gossip; the others report where they are. w-c got
	// one step further than w-a before the ring broke.
	c.mu.Lock()
	c.core.alive["w-b"] = false
	c.mu.Unlock()
	next, errs := reformAll(t, s,
		&controlpb.ReformRequest{JobId: job, Name: "w-a", Generation: 1, Epoch: 1, Steps: 3, Reason: "rank 1 lost", LostRank: 1},
		&controlpb.ReformRequest{JobId: job, Name: "w-c", Generation: 1, Epoch: 1, Steps: 4, Reason: "rank 1 lost", LostRank: 1})
	for name, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	a, cc := next["w-a"], next["w-c"]
	if a.Rank != 0 || cc.Rank != 1 || a.World != 2 || a.Generation != 2 || a.RingId == plans["w-a"].RingId {
		t.Errorf("new ring: w-a %+v, w-c %+v", a, cc)
	}
	// The global batch of 12 stays: 6 per rank. Everyone takes w-c's state
	// (rank 1 now) and goes on in epoch 2 (0-based 1).
	if a.BatchPerRank != 6 || a.StateRoot != 1 || cc.StateRoot != 1 || a.Epoch != 1 || strings.Join(a.Peers, ",") != "127.0.0.1:1a,127.0.0.1:1c" {
		t.Errorf("new plan %+v", a)
	}
	shard, err := s.EpochShard(context.Background(), &controlpb.EpochRequest{JobId: job, Rank: 0, Epoch: 1, Generation: 2})
	if err != nil || shard.Reform || shard.World != 2 || len(shard.Prior) != 1 || shard.Prior[0].World != 3 || shard.Prior[0].Consumed != 4*4*3 {
		t.Errorf("epoch 2 after the re-formation: %+v %v", shard, err)
	}
	if old, _ := s.EpochShard(context.Background(), &controlpb.EpochRequest{JobId: job, Epoch: 1, Generation: 1}); !old.Reform {
		t.Errorf("the old ring's shard request: %+v", old)
	}
	if rep, _ := s.Report(context.Background(), &controlpb.EpochReport{JobId: job, Epoch: 2, Generation: 1}); !rep.Reform {
		t.Errorf("the old ring's report: %+v", rep)
	}
	// w-b comes back asking: it was left out.
	_, errs = reformAll(t, s, &controlpb.ReformRequest{JobId: job, Name: "w-b", Generation: 2, Epoch: 1, Steps: 4, LostRank: -1})
	if err := errs["w-b"]; err == nil || !strings.Contains(err.Error(), "does not hold it") {
		t.Errorf("w-b after being left out: %v", err)
	}
	// A late duplicate of w-a's request gets its plan again.
	again, errs := reformAll(t, s, &controlpb.ReformRequest{JobId: job, Name: "w-a", Generation: 1, Epoch: 1, Steps: 3, LostRank: 1})
	if errs["w-a"] != nil || again["w-a"].Generation != 2 {
		t.Errorf("repeated request: %+v %v", again["w-a"], errs["w-a"])
	}
}

func TestReformBelowMinWorkersFailsTheJob(t *testing.T) {
	clock := newVirtualClock()
	c, s, _ := newTestCoordinator(t, 2, func(cfg *Config) { cfg.MinWorkers, cfg.Clock = 2, clock })
	plans := register(t, c, s, "w-a", "w-b")
	c.mu.Lock()
	c.core.alive["w-b"] = false
	c.mu.Unlock()
	var errs map[string]error
	inVirtualTime(t, c, clock, func() bool { return c.core.reform != nil && c.core.reform.short }, c.cfg.WaitTimeout, func() {
		_, errs = reformAll(t, s, &controlpb.ReformRequest{JobId: plans["w-a"].JobId, Name: "w-a", Generation: 1, Reason: "rank 1 lost", LostRank: 1})
	})
	if err := errs["w-a"]; err == nil || !strings.Contains(err.Error(), "fewer than --min-workers 2") || !strings.Contains(err.Error(), "rank 1 lost") {
		t.Errorf("below the minimum: %v", err)
	}
}

// A member the survivors found gone is left out after a second, before the
// gossip declares it dead: that is most of the stall after a kill.
func TestReformLeavesOutTheBlamedAfterAGrace(t *testing.T) {
	c, s, _ := newTestCoordinator(t, 3)
	plans := register(t, c, s, "w-a", "w-b", "w-c")
	job := plans["w-a"].JobId
	start := time.Now()
	next, errs := reformAll(t, s,
		&controlpb.ReformRequest{JobId: job, Name: "w-a", Generation: 1, LostRank: 1},
		&controlpb.ReformRequest{JobId: job, Name: "w-c", Generation: 1, LostRank: -1})
	took := time.Since(start)
	if errs["w-a"] != nil || next["w-a"].World != 2 || took < blameGrace || took > 5*time.Second {
		t.Errorf("blamed w-b still in the gossip: %+v %v after %v", next["w-a"], errs["w-a"], took)
	}
}

// A survivor still in the gossip that never asks (hung) is left out after the
// timeout rather than holding the job forever.
func TestReformTimeoutLeavesOutTheSilent(t *testing.T) {
	clock := newVirtualClock()
	c, s, _ := newTestCoordinator(t, 3, func(cfg *Config) { cfg.ReformTimeout, cfg.Clock = 300*time.Millisecond, clock })
	plans := register(t, c, s, "w-a", "w-b", "w-c")
	start := time.Now()
	var next map[string]*controlpb.JobPlan
	var errs map[string]error
	asked := func() bool { return c.core.reform != nil && len(c.core.reform.requests) == 2 }
	inVirtualTime(t, c, clock, asked, c.cfg.ReformTimeout, func() {
		next, errs = reformAll(t, s,
			&controlpb.ReformRequest{JobId: plans["w-a"].JobId, Name: "w-a", Generation: 1, LostRank: -1},
			&controlpb.ReformRequest{JobId: plans["w-a"].JobId, Name: "w-b", Generation: 1, LostRank: -1})
	})
	if errs["w-a"] != nil || next["w-a"].World != 2 || time.Since(start) > 5*time.Second {
		t.Errorf("after the timeout: %+v %v (%v)", next["w-a"], errs["w-a"], time.Since(start))
	}
}

// A worker that registers after the start enters at the next epoch
// boundary: the verdict of the epoch asks the ring to re-form, and the new
// ring (ranks by name, so the newcomer w-a is rank 0) starts the next epoch
// from the state of w-b, the old rank 0.
func TestLateWorkerEntersAtTheEpochBoundary(t *testing.T) {
	c, s, _ := newTestCoordinator(t, 2, func(cfg *Config) { cfg.Job.Epochs = 3 })
	plans := register(t, c, s, "w-b", "w-c")
	job := plans["w-b"].JobId
	joined := make(chan *controlpb.JobPlan, 1)
	go func() {
		p, err := s.Register(context.Background(), &controlpb.RegisterRequest{JobId: job, Name: "w-a", RingAddr: "127.0.0.1:1a"})
		if err != nil {
			t.Error(err)
		}
		joined <- p
	}()
	waitUntil(t, c, func() bool { return c.core.joiners["w-a"] })
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := s.Report(context.Background(), &controlpb.EpochReport{JobId: job, Rank: int32(r), Epoch: 1, Checksum: 5, Images: 6, Generation: 1})
			if err != nil || !rep.Reform || rep.Stop {
				t.Errorf("rank %d's verdict of epoch 1: %+v %v", r, rep, err)
			}
		}()
	}
	wg.Wait()
	next, errs := reformAll(t, s,
		&controlpb.ReformRequest{JobId: job, Name: "w-b", Generation: 1, Epoch: 0, Steps: 3, LostRank: -1},
		&controlpb.ReformRequest{JobId: job, Name: "w-c", Generation: 1, Epoch: 0, Steps: 3, LostRank: -1})
	for name, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	a := <-joined
	if a == nil || a.Generation != 2 || a.World != 3 || a.Rank != 0 || a.Epoch != 1 || a.StateRoot != 1 || a.BatchPerRank != 4 {
		t.Fatalf("the newcomer's plan: %+v", a)
	}
	if b := next["w-b"]; b.Rank != 1 || b.Epoch != 1 || b.StateRoot != 1 {
		t.Errorf("w-b's plan: %+v", b)
	}
	shard, err := s.EpochShard(context.Background(), &controlpb.EpochRequest{JobId: job, Epoch: 1, Generation: 2})
	if err != nil || shard.World != 3 || len(shard.Prior) != 0 {
		t.Errorf("epoch 2 in the grown ring: %+v %v", shard, err)
	}
}

// A worker that comes back under its name at a new address (a restarted pod)
// replaces its old self at once, without waiting for the gossip.
func TestRestartedWorkerReplacesItsOldSelf(t *testing.T) {
	c, s, _ := newTestCoordinator(t, 2)
	plans := register(t, c, s, "w-a", "w-b")
	job := plans["w-a"].JobId
	joined := make(chan *controlpb.JobPlan, 1)
	go func() {
		p, err := s.Register(context.Background(), &controlpb.RegisterRequest{JobId: job, Name: "w-b", RingAddr: "127.0.0.1:2b"})
		if err != nil {
			t.Error(err)
		}
		joined <- p
	}()
	waitUntil(t, c, func() bool { return c.core.joiners["w-b"] })
	// w-a's ring broke when the old w-b died; it asks, as a survivor.
	next, errs := reformAll(t, s, &controlpb.ReformRequest{JobId: job, Name: "w-a", Generation: 1, Epoch: 0, Steps: 2, LostRank: 1})
	if errs["w-a"] != nil {
		t.Fatal(errs["w-a"])
	}
	var b *controlpb.JobPlan
	select {
	case b = <-joined:
	case <-time.After(10 * time.Second):
		t.Fatal("the restarted w-b got no plan")
	}
	if b == nil || next["w-a"].World != 2 || b.Rank != 1 || b.Peers[1] != "127.0.0.1:2b" || b.StateRoot != 0 || b.Generation != 2 {
		t.Errorf("after w-b's restart: w-a %+v, w-b %+v", next["w-a"], b)
	}
	// The gossip declares the old w-b dead only now: that is not the new
	// one leaving, which stays in the ring (it used to be dropped).
	c.onMember(membership.Event{Kind: membership.Left, Name: "w-b", Meta: membership.Meta{Role: membership.RoleWorker, GRPC: "127.0.0.1:1b"}}, nil)
	c.mu.Lock()
	reforming, alive := c.core.reform != nil, c.core.alive["w-b"]
	c.mu.Unlock()
	if reforming || !alive {
		t.Errorf("the old w-b's left event: re-forming %v, w-b alive %v; want the restarted w-b kept", reforming, alive)
	}
	// The same name at the same address is a duplicate.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := s.Register(ctx, &controlpb.RegisterRequest{JobId: job, Name: "w-b", RingAddr: "127.0.0.1:2b"}); err == nil || !strings.Contains(err.Error(), "already in job") {
		t.Errorf("a second w-b at the same address: %v", err)
	}
}

// A worker killed and started again at once registers while the survivors'
// re-formation still waits for its old self: its registration completes the
// re-formation, and it gets its place in the ring that forms (it used to wait
// for the ring after that one, and its peers stalled in the ring's open).
func TestRestartedWorkerCompletesTheReformation(t *testing.T) {
	c, s, _ := newTestCoordinator(t, 2)
	plans := register(t, c, s, "w-a", "w-b")
	job := plans["w-a"].JobId
	reformed := make(chan *controlpb.JobPlan, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p, err := s.Reform(ctx, &controlpb.ReformRequest{JobId: job, Name: "w-a", Generation: 1, Epoch: 0, Steps: 2, LostRank: 1, Reason: "rank 1 lost"})
		if err != nil {
			t.Error(err)
		}
		reformed <- p
	}()
	waitUntil(t, c, func() bool { return c.core.reform != nil && c.core.reform.requests["w-a"] != nil })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	b, err := s.Register(ctx, &controlpb.RegisterRequest{JobId: job, Name: "w-b", RingAddr: "127.0.0.1:2b"})
	if err != nil {
		t.Fatalf("the restarted w-b: %v", err)
	}
	a := <-reformed
	if a == nil || b.Generation != 2 || a.Generation != 2 || b.World != 2 || b.Rank != 1 || b.RingId != a.RingId {
		t.Errorf("after w-b's restart: w-a %+v, w-b %+v", a, b)
	}
}

// A resumed coordinator takes again the reports of the epoch its predecessor
// died in: with no row for it, once every rank has sent its report (the line
// and the row are made then); with a row already written, at once and without
// a second row.
func TestResumedCoordinatorTakesTheLostEpochsReports(t *testing.T) {
	c, s, out := newTestCoordinator(t, 2, func(cfg *Config) { cfg.Job.Epochs = 5 })
	c.core.curves = []epochRow{{Epoch: 1, TrainLoss: 1.5, World: 2}}
	c.core.resumedAt = 2
	plans := register(t, c, s, "w-a", "w-b")
	job := plans["w-a"].JobId
	if p := plans["w-b"]; p.Epoch != 2 {
		t.Fatalf("the resumed job's plan starts at epoch %d, want 2", p.Epoch)
	}
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := s.Report(context.Background(), &controlpb.EpochReport{JobId: job, Rank: int32(r), Epoch: 2, TrainLoss: 1.25, Checksum: 9, Images: 6, Generation: 1})
			if err != nil || rep.Stop || rep.Reform {
				t.Errorf("rank %d's report of epoch 2 again: %+v %v", r, rep, err)
			}
		}()
	}
	wg.Wait()
	if got := out.String(); strings.Count(got, "Epoch 2/5 - Train loss: 1.2500") != 1 {
		t.Errorf("the coordinator printed:\n%s", got)
	}
	// Epoch 2 is now recorded: a report of it (from a rank whose verdict was
	// lost with the coordinator) is answered at once and adds nothing.
	c.core.verdicts = map[int]*controlpb.ReportReply{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := s.Report(ctx, &controlpb.EpochReport{JobId: job, Rank: 1, Epoch: 2, Checksum: 9, Generation: 1})
	if err != nil || rep.Stop || rep.Reform {
		t.Errorf("a report of a recorded epoch: %+v %v", rep, err)
	}
	if len(c.core.curves) != 2 || c.core.curves[1].Epoch != 2 || strings.Count(out.String(), "Epoch 2/5") != 1 {
		t.Errorf("rows %+v after the repeated report; printed:\n%s", c.core.curves, out.String())
	}
}

// Issue 19, item 10: w-a's packets to w-b are lost (a blackhole route), while
// all three reach the coordinator and stay in the gossip. The reports are the
// ring's: w-b heard nothing from w-a, w-a nothing from w-c (which stopped on
// w-b's abort), w-c relays w-b's. The coordinator must not form the same ring
// again: a blackhole breaks TCP both ways, so no ring of three avoids the
// pair, and it leaves one of them out.
func TestReformAvoidsALinkThatFailed(t *testing.T) {
	c, s, _ := newTestCoordinator(t, 3)
	plans := register(t, c, s, "w-a", "w-b", "w-c")
	job := plans["w-a"].JobId
	const silent = "allreduce: rank %d lost during all-reduce #40: nothing from %s for 20s (the collective's deadline)"
	start := time.Now()
	next, errs := reformAll(t, s,
		&controlpb.ReformRequest{JobId: job, Name: "w-a", Generation: 1, Epoch: 1, Steps: 5, LostRank: 2, Reason: fmt.Sprintf(silent, 2, "127.0.0.1:1c")},
		&controlpb.ReformRequest{JobId: job, Name: "w-b", Generation: 1, Epoch: 1, Steps: 5, LostRank: 0, Reason: fmt.Sprintf(silent, 0, "127.0.0.1:1a")},
		&controlpb.ReformRequest{JobId: job, Name: "w-c", Generation: 1, Epoch: 1, Steps: 5, LostRank: 0,
			Reason: "allreduce: rank 0 lost during all-reduce #40: reported by rank 1: " + fmt.Sprintf(silent, 0, "127.0.0.1:1a")})
	if took := time.Since(start); took > time.Second {
		t.Errorf("the re-formation took %v with every member asking", took)
	}
	b, cc := next["w-b"], next["w-c"]
	if errs["w-b"] != nil || errs["w-c"] != nil || b.World != 2 || b.Rank != 0 || cc.Rank != 1 || strings.Join(b.Peers, ",") != "127.0.0.1:1b,127.0.0.1:1c" {
		t.Fatalf("the new ring: w-b %v %v, w-c %v %v", b, errs["w-b"], cc, errs["w-c"])
	}
	if err := errs["w-a"]; err == nil || !strings.Contains(err.Error(), "left out of ring 2") || !strings.Contains(err.Error(), "w-a->w-b") {
		t.Errorf("w-a: %v", err)
	}
	// Its late duplicate hears the same.
	_, errs = reformAll(t, s, &controlpb.ReformRequest{JobId: job, Name: "w-a", Generation: 1, LostRank: 2})
	if err := errs["w-a"]; err == nil || !strings.Contains(err.Error(), "failed links") {
		t.Errorf("w-a asking again: %v", err)
	}
}

// A ring that fails to open because w-b cannot connect to w-c: a ring of four
// keeps everyone, in the order that keeps the two apart, and so does every
// later one, until w-c registers again as a new process.
func TestRingThatDidNotOpenIsReordered(t *testing.T) {
	c, s, _ := newTestCoordinator(t, 4, func(cfg *Config) { cfg.Job.Epochs = 3 })
	plans := register(t, c, s, "w-a", "w-b", "w-c", "w-d")
	job := plans["w-a"].JobId
	next, errs := reformAll(t, s,
		&controlpb.ReformRequest{JobId: job, Name: "w-a", Generation: 1, LostRank: -1, Reason: "allreduce: ring closed"},
		&controlpb.ReformRequest{JobId: job, Name: "w-b", Generation: 1, LostRank: 2,
			Reason: "worker: joining ring 1: allreduce: rank 2 lost during ring open: connect to 127.0.0.1:1c: context deadline exceeded"},
		&controlpb.ReformRequest{JobId: job, Name: "w-c", Generation: 1, LostRank: 1,
			Reason: "allreduce: rank 1 lost during ring open: rank 1 (127.0.0.1:1b) did not connect within 1m0s"},
		&controlpb.ReformRequest{JobId: job, Name: "w-d", Generation: 1, LostRank: -1, Reason: "allreduce: ring closed"})
	for name, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if p := next["w-a"]; p.World != 4 || strings.Join(p.Peers, ",") != "127.0.0.1:1a,127.0.0.1:1b,127.0.0.1:1d,127.0.0.1:1c" || next["w-d"].Rank != 2 || next["w-c"].Rank != 3 {
		t.Fatalf("the reordered ring: %v", p)
	}
	// A worker joins: the ring grown at the epoch boundary still keeps w-b and
	// w-c apart.
	joined := make(chan *controlpb.JobPlan, 1)
	go func() {
		p, _ := s.Register(context.Background(), &controlpb.RegisterRequest{JobId: job, Name: "w-e", RingAddr: "127.0.0.1:1e"})
		joined <- p
	}()
	waitUntil(t, c, func() bool { return c.core.joiners["w-e"] })
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Report(context.Background(), &controlpb.EpochReport{JobId: job, Rank: int32(r), Epoch: 1, Checksum: 5, Images: 6, Generation: 2})
		}()
	}
	wg.Wait()
	var again []*controlpb.ReformRequest
	for _, name := range []string{"w-a", "w-b", "w-c", "w-d"} {
		again = append(again, &controlpb.ReformRequest{JobId: job, Name: name, Generation: 2, Epoch: 1, LostRank: -1})
	}
	reformAll(t, s, again...)
	if e := <-joined; e == nil || strings.Join(e.Peers, ",") != "127.0.0.1:1a,127.0.0.1:1b,127.0.0.1:1d,127.0.0.1:1c,127.0.0.1:1e" {
		t.Fatalf("the grown ring: %v", e)
	}
	// w-c restarted at a new address: its old links say nothing of it.
	c.mu.Lock()
	c.core.alive["w-c"] = false
	c.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Register(ctx, &controlpb.RegisterRequest{JobId: job, Name: "w-c", RingAddr: "127.0.0.1:2c"})
	waitUntil(t, c, func() bool { return c.core.joiners["w-c"] && len(c.core.failedLinks) == 0 })
}
