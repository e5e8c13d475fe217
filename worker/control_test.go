package worker

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/allreduce"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
	"github.com/alexring/alexring/internal/cluster/membership"
	"github.com/alexring/alexring/internal/security"
	"github.com/alexring/alexring/sharding"
)

// fakeControl is a coordinator's control service whose handlers the test
// writes; an unset one refuses. Handlers that block return with their
// context, which ends when the worker's deadline passes.
type fakeControl struct {
	controlpb.UnimplementedControlServer
	register   func(context.Context, *controlpb.RegisterRequest) (*controlpb.JobPlan, error)
	epochShard func(context.Context, *controlpb.EpochRequest) (*controlpb.Shard, error)
	report     func(context.Context, *controlpb.EpochReport) (*controlpb.ReportReply, error)
	reform     func(context.Context, *controlpb.ReformRequest) (*controlpb.JobPlan, error)
}

func (f *fakeControl) Register(ctx context.Context, r *controlpb.RegisterRequest) (*controlpb.JobPlan, error) {
	if f.register == nil {
		return nil, status.Error(codes.Unimplemented, "no register")
	}
	return f.register(ctx, r)
}

func (f *fakeControl) EpochShard(ctx context.Context, r *controlpb.EpochRequest) (*controlpb.Shard, error) {
	if f.epochShard == nil {
		return nil, status.Error(codes.Unimplemented, "no epoch shard")
	}
	return f.epochShard(ctx, r)
}

func (f *fakeControl) Report(ctx context.Context, r *controlpb.EpochReport) (*controlpb.ReportReply, error) {
	if f.report == nil {
		return nil, status.Error(codes.Unimplemented, "no report")
	}
	return f.report(ctx, r)
}

func (f *fakeControl) Reform(ctx context.Context, r *controlpb.ReformRequest) (*controlpb.JobPlan, error) {
	if f.reform == nil {
		return nil, status.Error(codes.Unimplemented, "no reform")
	}
	return f.reform(ctx, r)
}

// never answers a call: it waits for the caller to give up.
func never[T any](ctx context.Context) (T, error) {
	var zero T
	<-ctx.Done()
	return zero, ctx.Err()
}

// serveControl serves f on loopback (creds nil: plaintext) and returns its
// address.
func serveControl(t *testing.T, f *fakeControl, creds credentials.TransportCredentials) string {
	t.Helper()
	var opts []grpc.ServerOption
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	s := grpc.NewServer(opts...)
	controlpb.RegisterControlServer(s, f)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// gossipCoordinator is a coordinator's gossip member naming control as its
// control address: what a worker finds when it joins.
func gossipCoordinator(t *testing.T, control string) string {
	t.Helper()
	m, err := membership.Start(context.Background(), membership.Config{Name: "coordinator", Bind: "127.0.0.1:0", Local: true,
		Meta: membership.Meta{Role: membership.RoleCoordinator, GRPC: control}}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Leave(100 * time.Millisecond) })
	return m.Addr()
}

// testJob is what the fake coordinator hands out: a tiny job on synthetic
// data.
type testJob struct {
	cfg   configs.Job
	train *sharding.Dataset
}

func newTestJob(t *testing.T) testJob {
	t.Helper()
	cfg := tinyConfig(synthData(t, 4), t.TempDir())
	cfg.Epochs, cfg.Batch = 1, 8
	train, _, err := sharding.ScanSplits(cfg.Data)
	if err != nil {
		t.Fatal(err)
	}
	return testJob{cfg: cfg, train: train}
}

// plan is rank 0's plan in ring gen of the peers.
func (tj testJob) plan(t *testing.T, gen int32, peers ...string) *controlpb.JobPlan {
	t.Helper()
	return &controlpb.JobPlan{JobId: "job-test", Rank: 0, World: int32(len(peers)), Peers: peers, RingId: "ring-" + string(rune('0'+gen)),
		Settings: controlpb.NewJobSettings(tj.cfg), Classes: tj.train.Classes, Dataset: tj.train.Fingerprint(), Generation: gen,
		BatchPerRank: int32(tj.cfg.Batch / len(peers)), Epoch: 0}
}

// shard is the coordinator's answer to an EpochShard of a world of one.
func (tj testJob) shard(r *controlpb.EpochRequest) *controlpb.Shard {
	return &controlpb.Shard{Seed: tj.cfg.Seed, Epoch: r.Epoch, World: 1, Size: int32(len(tj.train.Samples)), Dataset: tj.train.Fingerprint(), Shuffle: true}
}

func joinConfig(gossip string) JoinConfig {
	jc := DefaultJoinConfig()
	jc.Join, jc.Name, jc.Local, jc.JoinTimeout = gossip, "w0", true, 10*time.Second
	return jc
}

// runJoined runs RunJoined and returns its error and how long it took, or
// fails the test when it has not returned within limit (the defects these
// tests catch are hangs).
func runJoined(t *testing.T, jc JoinConfig, log *zap.Logger, limit time.Duration) (error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- RunJoined(ctx, jc, log) }()
	select {
	case err := <-done:
		return err, time.Since(start)
	case <-time.After(limit):
		cancel()
		err := <-done
		t.Fatalf("the worker had not returned after %v (then, cancelled: %v)", limit, err)
		return nil, 0
	}
}

// A coordinator that refuses the worker's certificate, or presents one the
// worker refuses, is not an outage: the worker exits at once with the TLS
// error and the coordinator's address instead of waiting out its grace.
func TestRefusedCertificateIsFinal(t *testing.T) {
	pki := func(name string) *security.Material {
		cfg, err := security.WriteTestPKI(t.TempDir(), name)
		if err != nil {
			t.Fatal(err)
		}
		m, err := security.Load(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ours, theirs := pki("job"), pki("other")
	stranger := &security.Material{TLS: ours.TLS.Clone()} // trusts the job's CA, holds another's certificate
	stranger.TLS.Certificates = theirs.TLS.Certificates
	control := serveControl(t, &fakeControl{}, ours.ServerCreds())
	gossip := gossipCoordinator(t, control)
	for name, sec := range map[string]*security.Material{"the worker's CA is another": theirs, "the worker's certificate is another CA's": stranger} {
		t.Run(name, func(t *testing.T) {
			jc := joinConfig(gossip)
			jc.Security, jc.CoordinatorGrace = sec, time.Minute
			err, took := runJoined(t, jc, zap.NewNop(), 20*time.Second)
			if err == nil || errors.Is(err, errCoordinatorLost) || !security.IsHandshakeRefusal(err) ||
				!strings.Contains(err.Error(), control) || !strings.Contains(err.Error(), "TLS handshake") {
				t.Fatalf("want a final TLS error naming %s, got %v", control, err)
			}
			if took > 10*time.Second {
				t.Errorf("took %v to give up on a refused certificate", took)
			}
		})
	}
	// A coordinator that is not there is still an outage, whatever the TLS.
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	down := lis.Addr().String()
	lis.Close()
	j := &job{jc: &JoinConfig{StartTimeout: 5 * time.Second, Security: ours}, node: &allreduce.Node{Addr: "127.0.0.1:1"}, unsent: &unsentReport{}, log: zap.NewNop()}
	if _, err := j.registerAt(context.Background(), down); !errors.Is(err, errCoordinatorLost) {
		t.Errorf("registering with nobody: %v, want the coordinator lost", err)
	}
}

// blockingJob is a worker's job registered with a fake coordinator whose other
// calls never answer.
func blockingJob(t *testing.T, tj testJob, jc *JoinConfig, log *zap.Logger) *job {
	t.Helper()
	f := &fakeControl{
		epochShard: func(ctx context.Context, _ *controlpb.EpochRequest) (*controlpb.Shard, error) {
			return never[*controlpb.Shard](ctx)
		},
		report: func(ctx context.Context, _ *controlpb.EpochReport) (*controlpb.ReportReply, error) {
			return never[*controlpb.ReportReply](ctx)
		},
		reform: func(ctx context.Context, _ *controlpb.ReformRequest) (*controlpb.JobPlan, error) {
			return never[*controlpb.JobPlan](ctx)
		},
	}
	const ringAddr = "127.0.0.1:1"
	f.register = func(context.Context, *controlpb.RegisterRequest) (*controlpb.JobPlan, error) {
		return tj.plan(t, 1, ringAddr), nil
	}
	addr := serveControl(t, f, nil)
	j := &job{jc: jc, node: &allreduce.Node{Addr: ringAddr}, unsent: &unsentReport{}, log: log}
	conn, err := j.registerAt(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return j
}

// within runs fn, failing the test when it does not return within limit.
func within(t *testing.T, limit time.Duration, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		t.Fatalf("%s: no answer and no error after %v", what, limit)
		return nil
	}
}

// Every control call has a deadline from the job's settings; one that passes
// is a lost coordinator (the grace rule), and says what was waited for, how
// long and where.
func TestControlCallsHaveDeadlines(t *testing.T) {
	tj := newTestJob(t)
	tj.cfg.Ring.OpTimeout = 200 * time.Millisecond
	jc := &JoinConfig{StartTimeout: 300 * time.Millisecond, Name: "w0", Compute: alexnet.CPUCompute()}
	j := blockingJob(t, tj, jc, zap.NewNop())
	ctx := context.Background()
	for _, tc := range []struct {
		call  string
		limit time.Duration
		fn    func() error
	}{
		{"epoch 1 shard", 200 * time.Millisecond, func() error { _, err := j.epochShard(ctx, 0); return err }},
		// The start bound plus 100 validation images at 1 ms per training image.
		{"report epoch 1", 400 * time.Millisecond, func() error {
			return j.report(ctx, EpochResult{Epoch: 1, Epochs: 1, Images: 1000, Duration: time.Second}, 100)
		}},
		{"reform ring 1", 300 * time.Millisecond, func() error { _, err := j.askReform(ctx, 0, 3, errReform); return err }},
	} {
		start := time.Now()
		err := within(t, 10*time.Second, tc.call, tc.fn)
		took := time.Since(start)
		if !errors.Is(err, errCoordinatorLost) || !strings.Contains(err.Error(), tc.call) || !strings.Contains(err.Error(), j.addr) ||
			!strings.Contains(err.Error(), "within "+tc.limit.String()) {
			t.Errorf("%s: %v; want the coordinator lost, naming the call, %s and the deadline %v", tc.call, err, j.addr, tc.limit)
		}
		if took < tc.limit || took > tc.limit+5*time.Second {
			t.Errorf("%s gave up after %v, want its deadline %v", tc.call, took, tc.limit)
		}
	}
	if j.unsent.report == nil || j.unsent.report.Epoch != 1 {
		t.Errorf("the unanswered report is not kept for a coordinator that comes back: %+v", j.unsent.report)
	}
}

func TestDeadlinesFollowTheJob(t *testing.T) {
	jc := &JoinConfig{StartTimeout: 10 * time.Minute}
	cfg := configs.DefaultJob()
	cfg.Ring.OpTimeout = 20 * time.Second
	d := deadlinesFor(jc, cfg, coordinatorTimeouts{})
	if d.answer != 20*time.Second || d.start != 10*time.Minute || d.reform != 10*time.Minute {
		t.Errorf("deadlines %+v", d)
	}
	// A coordinator that says it may wait longer for survivors and joiners
	// than the worker's own bound gets the longer wait.
	d = deadlinesFor(jc, cfg, coordinatorTimeouts{ReformTimeout: 15 * time.Minute, WaitTimeout: 5 * time.Minute})
	if d.reform != 20*time.Minute+20*time.Second {
		t.Errorf("reform deadline %v with the coordinator's 15m + 5m", d.reform)
	}
	// Report: the start bound plus rank 0's validation at this rank's pace
	// (100 ms per training image, 3000 validation images).
	r := EpochResult{Images: 600, Duration: time.Minute}
	if got := d.reportDeadline(r, 3000); got != 10*time.Minute+5*time.Minute {
		t.Errorf("report deadline %v", got)
	}
	// No overflow into a deadline in the past.
	huge := deadlinesFor(&JoinConfig{StartTimeout: 1 << 62}, cfg, coordinatorTimeouts{ReformTimeout: 1 << 62, WaitTimeout: 1 << 62})
	if huge.reform <= 0 || huge.reportDeadline(EpochResult{Images: 1, Duration: 1 << 62}, 1<<30) <= 0 {
		t.Errorf("saturated deadlines %+v went negative", huge)
	}
	// The plan carries the coordinator's timeouts beside the job config.
	tj := newTestJob(t)
	p := tj.plan(t, 1, "127.0.0.1:1")
	p.ReformTimeout, p.WaitTimeout = durationpb.New(30*time.Minute), durationpb.New(0)
	j := &job{jc: jc, node: &allreduce.Node{Addr: "127.0.0.1:1"}, log: zap.NewNop()}
	if err := j.accept(p, 0); err != nil {
		t.Fatal(err)
	}
	if want := 30*time.Minute + tj.cfg.Ring.OpTimeout; j.deadlines.reform != want {
		t.Errorf("reform deadline from the plan %v, want %v", j.deadlines.reform, want)
	}
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if mf.GetType() == dto.MetricType_COUNTER {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s", name)
	return 0
}

// A wait for the coordinator is logged once, with what it waits for and the
// most it will wait, and shows in the metrics while it lasts.
func TestWaitForTheCoordinatorIsLoggedAndMeasured(t *testing.T) {
	defer func(d time.Duration) { waitLogAfter = d }(waitLogAfter)
	waitLogAfter = 50 * time.Millisecond
	core, logs := observer.New(zap.InfoLevel)
	logged := make(chan struct{}, 1) // the wait's line is in logs
	log := zap.New(core, zap.Hooks(func(e zapcore.Entry) error {
		if e.Message == "waiting for the coordinator" {
			select {
			case logged <- struct{}{}:
			default:
			}
		}
		return nil
	}))
	reg := prometheus.NewRegistry()
	tj := newTestJob(t)
	jc := &JoinConfig{StartTimeout: time.Minute, Name: "w0", Compute: alexnet.CPUCompute(), Telemetry: Telemetry{Metrics: NewMetrics(reg)}}
	j := blockingJob(t, tj, jc, log)
	entered, release := make(chan struct{}), make(chan struct{})
	// The same server answers: swap its Report for one that answers once
	// released.
	f := &fakeControl{report: func(ctx context.Context, _ *controlpb.EpochReport) (*controlpb.ReportReply, error) {
		close(entered)
		<-release
		return &controlpb.ReportReply{}, nil
	}}
	j.control = controlpb.NewControlClient(dialFake(t, f))
	done := make(chan error, 1)
	go func() {
		done <- j.report(context.Background(), EpochResult{Epoch: 2, Epochs: 3, Images: 10, Duration: time.Second}, 0)
	}()
	<-entered
	select {
	case <-logged:
	case <-time.After(10 * time.Second):
		t.Fatal("the wait was not logged within 10 s")
	}
	if w := gauge(t, reg, "alexring_coordinator_wait_seconds"); w < 0.05 {
		t.Errorf("coordinator wait gauge %v during a wait of over 50ms", w)
	}
	// Stays: more of the same wait must really pass (twice waitLogAfter, on
	// the system's timer) for a second line to show if there were one.
	time.Sleep(100 * time.Millisecond)
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waiting := logs.FilterMessage("waiting for the coordinator").All()
	if len(waiting) != 1 {
		t.Fatalf("%d lines for one wait, want 1", len(waiting))
	}
	fields := waiting[0].ContextMap()
	if fields["call"] != "report epoch 2" || fields["at_most"] != time.Minute || fields["coordinator"] != j.addr ||
		!strings.Contains(fields["waits_for"].(string), "every rank's report") {
		t.Errorf("wait logged as %v", fields)
	}
	if logs.FilterMessage("the coordinator answered").Len() != 1 {
		t.Errorf("the end of the wait is not logged")
	}
	if w := gauge(t, reg, "alexring_coordinator_wait_seconds"); w != 0 {
		t.Errorf("coordinator wait gauge %v after the answer, want 0", w)
	}
	if total := gauge(t, reg, "alexring_coordinator_wait_seconds_total"); total < 0.15 {
		t.Errorf("coordinator wait total %vs after a wait of over 150ms", total)
	}
}

// dialFake serves f and returns a plaintext client connection to it.
func dialFake(t *testing.T, f *fakeControl) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(serveControl(t, f, nil), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// A worker cut off from its coordinator (which stays in its gossip: the
// control connection alone is dead) does not wait for ever: its report's
// deadline passes, it waits --coordinator-grace for a coordinator that
// answers, then gives up saying so.
func TestCutOffWorkerFollowsTheGrace(t *testing.T) {
	defer func(d time.Duration) { waitLogAfter = d }(waitLogAfter)
	waitLogAfter = 100 * time.Millisecond
	tj := newTestJob(t)
	var mu sync.Mutex
	registered := 0
	f := &fakeControl{
		register: func(_ context.Context, r *controlpb.RegisterRequest) (*controlpb.JobPlan, error) {
			mu.Lock()
			defer mu.Unlock()
			if registered++; registered > 1 {
				return nil, status.Error(codes.Unavailable, "cut off")
			}
			return tj.plan(t, 1, r.RingAddr), nil
		},
		epochShard: func(_ context.Context, r *controlpb.EpochRequest) (*controlpb.Shard, error) { return tj.shard(r), nil },
		report: func(ctx context.Context, _ *controlpb.EpochReport) (*controlpb.ReportReply, error) {
			return never[*controlpb.ReportReply](ctx)
		},
	}
	gossip := gossipCoordinator(t, serveControl(t, f, nil))
	jc := joinConfig(gossip)
	jc.StartTimeout, jc.CoordinatorGrace = time.Second, time.Second
	core, logs := observer.New(zap.InfoLevel)
	err, _ := runJoined(t, jc, zap.New(core), time.Minute)
	if !errors.Is(err, errCoordinatorLost) || !strings.Contains(err.Error(), "no coordinator came back within --coordinator-grace 1s") {
		t.Fatalf("cut-off worker: %v", err)
	}
	lost := logs.FilterMessage("the coordinator is gone; waiting for one to come back").All()
	if len(lost) != 1 || !strings.Contains(lost[0].ContextMap()["error"].(string), "report epoch 1") {
		t.Errorf("the loss is not logged once naming the report: %v", lost)
	}
	if n := logs.FilterMessage("waiting for the coordinator").FilterField(zap.String("call", "report epoch 1")).Len(); n != 1 {
		t.Errorf("the report's wait logged %d times, want once", n)
	}
}

// bogusPeer is a peer that accepts connections but runs no ring: opening a
// ring through it fails at once. It stops when the test ends.
func bogusPeer(t *testing.T) string {
	t.Helper()
	bogus := grpc.NewServer()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go bogus.Serve(lis)
	t.Cleanup(bogus.Stop)
	return lis.Addr().String()
}

// A re-formed ring that does not open is reported to the coordinator, naming
// the rank it could not reach in that ring and no steps trained in it, and the
// coordinator asked again, rather than the worker exiting; the same for the
// first ring.
func TestRingThatDoesNotOpenIsReportedAndAskedAgain(t *testing.T) {
	bogusAddr := bogusPeer(t)
	for _, firstRingFails := range []bool{false, true} {
		name := map[bool]string{false: "re-formed ring", true: "first ring"}[firstRingFails]
		t.Run(name, func(t *testing.T) {
			tj := newTestJob(t)
			var mu sync.Mutex
			var reforms []*controlpb.ReformRequest
			f := &fakeControl{
				register: func(_ context.Context, r *controlpb.RegisterRequest) (*controlpb.JobPlan, error) {
					if firstRingFails {
						return tj.plan(t, 1, r.RingAddr, bogusAddr), nil
					}
					return tj.plan(t, 1, r.RingAddr), nil
				},
				epochShard: func(_ context.Context, r *controlpb.EpochRequest) (*controlpb.Shard, error) {
					if r.Generation == 1 {
						return &controlpb.Shard{Reform: true}, nil
					}
					return tj.shard(r), nil
				},
				report: func(context.Context, *controlpb.EpochReport) (*controlpb.ReportReply, error) {
					return &controlpb.ReportReply{}, nil
				},
			}
			var self string
			f.reform = func(_ context.Context, r *controlpb.ReformRequest) (*controlpb.JobPlan, error) {
				mu.Lock()
				defer mu.Unlock()
				reforms = append(reforms, r)
				if r.Generation == 1 && !firstRingFails {
					return tj.plan(t, 2, self, bogusAddr), nil
				}
				return tj.plan(t, r.Generation+1, self), nil
			}
			register := f.register
			f.register = func(ctx context.Context, r *controlpb.RegisterRequest) (*controlpb.JobPlan, error) {
				mu.Lock()
				self = r.RingAddr
				mu.Unlock()
				return register(ctx, r)
			}
			jc := joinConfig(gossipCoordinator(t, serveControl(t, f, nil)))
			jc.CoordinatorGrace = 0
			if err, _ := runJoined(t, jc, zap.NewNop(), time.Minute); err != nil {
				t.Fatalf("the worker exited: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			failed := reforms[len(reforms)-1]
			want := int32(2)
			if firstRingFails {
				want = 1
			}
			if failed.Generation != want || failed.LostRank != 1 || failed.Steps != 0 || failed.Epoch != 0 || !strings.Contains(failed.Reason, "ring open") {
				t.Errorf("the ring that did not open was reported as %+v; want generation %d, lost rank 1 (the peer), 0 steps", failed, want)
			}
		})
	}
}

// lostPeer names this rank's own failed hop, not a rank that another one
// lost and relayed: in a ring of 3, rank 0 losing rank 2 tells rank 1, whose
// successor is rank 2, although rank 1's links held.
func TestLostPeerNamesOwnHopsOnly(t *testing.T) {
	log := zap.NewNop()
	var nodes []*allreduce.Node
	var peers []string
	for range 3 {
		n, err := allreduce.Listen("127.0.0.1:0", nil, log)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		nodes, peers = append(nodes, n), append(peers, n.Addr)
	}
	rings := make([]*allreduce.Ring, 3)
	var wg sync.WaitGroup
	for r := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := allreduce.DefaultConfig()
			cfg.RingID, cfg.Rank, cfg.World, cfg.Peers, cfg.OpTimeout = "relay", r, 3, peers, 30*time.Second
			ring, err := allreduce.Open(context.Background(), nodes[r].Service, cfg, log)
			if err != nil {
				t.Error(err)
				return
			}
			rings[r] = ring
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, r := range rings {
		defer r.Close()
	}
	// Ranks 0 and 1 all-reduce; rank 2 never joins in, and rank 0 hears (as
	// from the gossip) that it is gone.
	errs := make([]error, 2)
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = rings[r].AllReduce(context.Background(), make([]float32, 64), allreduce.Sum)
		}()
	}
	rings[0].Fail(2, "rank 2 left the cluster")
	wg.Wait()
	if got := lostPeer(errs[0]); got != 2 {
		t.Errorf("rank 0, told rank 2 is gone: lost %d (%v), want 2", got, errs[0])
	}
	if got := lostPeer(errs[1]); got != -1 {
		t.Errorf("rank 1, told by rank 0: lost %d (%v), want -1 (its own hops held)", got, errs[1])
	}
	direct := &allreduce.PeerError{Rank: 1, Collective: "ring open", Err: errors.New("connect to 127.0.0.1:9: connection refused")}
	if got := lostPeer(direct); got != 1 {
		t.Errorf("a ring that did not open: lost %d, want 1", got)
	}
	if got := lostPeer(errReform); got != -1 {
		t.Errorf("a re-formation the coordinator asked for: lost %d, want -1", got)
	}
}

func TestCheckPlanRefusesBadPlans(t *testing.T) {
	const self = "127.0.0.1:7950"
	good := func() *controlpb.JobPlan {
		return &controlpb.JobPlan{JobId: "job", Rank: 1, World: 2, Peers: []string{"127.0.0.1:7951", self}, RingId: "r", Generation: 3, BatchPerRank: 4, StateRoot: 1}
	}
	if err := checkPlan(good(), self, "job", 2); err != nil {
		t.Fatalf("good plan refused: %v", err)
	}
	for name, bad := range map[string]func(*controlpb.JobPlan){
		"world 0":             func(p *controlpb.JobPlan) { p.World, p.Peers, p.Rank, p.StateRoot = 0, nil, 0, 0 },
		"rank = world":        func(p *controlpb.JobPlan) { p.Rank = 2 },
		"negative rank":       func(p *controlpb.JobPlan) { p.Rank = -1 },
		"peers short":         func(p *controlpb.JobPlan) { p.World = 3 },
		"absurd world":        func(p *controlpb.JobPlan) { p.World = 1 << 30 },
		"not this worker":     func(p *controlpb.JobPlan) { p.Peers[1] = "127.0.0.1:9" },
		"duplicate peers":     func(p *controlpb.JobPlan) { p.Peers[0] = self },
		"empty peer":          func(p *controlpb.JobPlan) { p.Peers[0] = "" },
		"state root outside":  func(p *controlpb.JobPlan) { p.StateRoot = 2 },
		"negative batch":      func(p *controlpb.JobPlan) { p.BatchPerRank = -4 },
		"older generation":    func(p *controlpb.JobPlan) { p.Generation = 2 },
		"negative epoch":      func(p *controlpb.JobPlan) { p.Epoch = -1 },
		"another job":         func(p *controlpb.JobPlan) { p.JobId = "other" },
		"no ring id":          func(p *controlpb.JobPlan) { p.RingId = "" },
		"no job id":           func(p *controlpb.JobPlan) { p.JobId = "" },
		"state root negative": func(p *controlpb.JobPlan) { p.StateRoot = -1 },
	} {
		p := good()
		bad(p)
		if err := checkPlan(p, self, "job", 2); err == nil {
			t.Errorf("%s: accepted %+v", name, p)
		}
	}
}

// F1: a peer of the ring being opened died after the plan was made (a
// survivor killed once it had asked for its place): it never connects. The
// coordinator, which learns it (the gossip, or the peer's restart), re-forms,
// and the rank waiting in the open asks again at once, rather than after the
// ring's connect timeout (30 s here), as it used to.
func TestOpenEndsWhenTheCoordinatorReforms(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // connections to it are refused: the process is gone
	tj := newTestJob(t)
	tj.cfg.Ring.OpTimeout = 30 * time.Second
	var mu sync.Mutex
	var self string
	var reforms []*controlpb.ReformRequest
	registered := time.Now()
	f := &fakeControl{
		register: func(_ context.Context, r *controlpb.RegisterRequest) (*controlpb.JobPlan, error) {
			mu.Lock()
			self, registered = r.RingAddr, time.Now()
			mu.Unlock()
			p := tj.plan(t, 1, r.RingAddr, deadAddr)
			return p, nil
		},
		epochShard: func(_ context.Context, r *controlpb.EpochRequest) (*controlpb.Shard, error) {
			mu.Lock()
			defer mu.Unlock()
			if r.Generation == 1 {
				// The coordinator re-forms ring 1 half a second in.
				return &controlpb.Shard{Reform: time.Since(registered) > 500*time.Millisecond}, nil
			}
			return tj.shard(r), nil
		},
		report: func(context.Context, *controlpb.EpochReport) (*controlpb.ReportReply, error) {
			return &controlpb.ReportReply{}, nil
		},
		reform: func(_ context.Context, r *controlpb.ReformRequest) (*controlpb.JobPlan, error) {
			mu.Lock()
			defer mu.Unlock()
			reforms = append(reforms, r)
			return tj.plan(t, r.Generation+1, self), nil
		},
	}
	jc := joinConfig(gossipCoordinator(t, serveControl(t, f, nil)))
	jc.CoordinatorGrace = 0
	err, took := runJoined(t, jc, zap.NewNop(), time.Minute)
	if err != nil {
		t.Fatalf("the worker exited: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reforms) != 1 || reforms[0].Generation != 1 || reforms[0].LostRank != -1 || !strings.Contains(reforms[0].Reason, "re-forms the ring being opened") {
		t.Fatalf("reforms %+v; want one of ring 1, naming no lost rank (the coordinator asked)", reforms)
	}
	if took > 20*time.Second {
		t.Errorf("the worker took %v: it waited out the ring's connect timeout", took)
	}
}
