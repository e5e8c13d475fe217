package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/allreduce"
	"github.com/alexring/alexring/coordinator/controlpb"
	"github.com/alexring/alexring/coordinator/membership"
	"github.com/alexring/alexring/internal/security"
	"github.com/alexring/alexring/sharding"
)

// JoinConfig is how a worker finds its job.
type JoinConfig struct {
	Join        string          // the coordinator's gossip address
	Bind        string          // this worker's gossip address (port 0 picks one)
	RingAddr    string          // where this worker's ring service listens
	Name        string          // membership name; ranks follow the sorted names
	Compute     alexnet.Compute // where this rank computes; its Device goes to the coordinator
	Data        string          // overrides the job's data folder (another mount point)
	JoinTimeout time.Duration   // retries of the first join
	// StartTimeout bounds the wait for the job to start once registered.
	StartTimeout time.Duration
	Local        bool               // loopback-tuned failure detection
	Security     *security.Material // gossip key and mTLS (nil: neither)
	Job          string             // the job to join; empty: whichever the coordinator runs
	// CoordinatorGrace is how long a worker that lost its coordinator waits
	// for one to come back (restarted with --resume) before it gives up.
	CoordinatorGrace time.Duration
	Telemetry        Telemetry // progress bars, metrics, timeline
}

// RunJoined is one rank of a job: join the cluster, register with the
// coordinator, open the ring, train, report every epoch. It returns when the
// job is done, or with the error that ended it.
func RunJoined(ctx context.Context, jc JoinConfig, log *zap.Logger) error {
	node, err := allreduce.Listen(jc.RingAddr, jc.Security.ServerCreds(), log)
	if err != nil {
		return err
	}
	defer node.Close()
	var key []byte
	if jc.Security != nil {
		key = jc.Security.GossipKey
	}
	member, err := membership.Start(membership.Config{
		Name: jc.Name, Bind: jc.Bind, Join: jc.Join, JoinTimeout: jc.JoinTimeout, Local: jc.Local, SecretKey: key,
		Meta: membership.Meta{Role: membership.RoleWorker, GRPC: node.Addr, Device: jc.Compute.Device},
	}, log)
	if err != nil {
		return err
	}
	defer member.Leave(time.Second)
	var lostAt time.Time
	var unsent unsentReport
	for {
		registered, err := runJob(ctx, &jc, node, member, &unsent, log)
		if registered {
			lostAt = time.Time{}
		}
		if !errors.Is(err, errCoordinatorLost) || jc.CoordinatorGrace <= 0 || ctx.Err() != nil {
			return err
		}
		if lostAt.IsZero() {
			lostAt = time.Now()
			log.Warn("the coordinator is gone; waiting for one to come back", zap.Duration("grace", jc.CoordinatorGrace), zap.Error(err))
		}
		if werr := waitForCoordinator(ctx, member, jc.Join, lostAt.Add(jc.CoordinatorGrace)); werr != nil {
			return fmt.Errorf("worker: %w; no coordinator came back within --coordinator-grace %v", err, jc.CoordinatorGrace)
		}
	}
}

// errCoordinatorLost marks a control call that found no coordinator.
var errCoordinatorLost = errors.New("worker: the coordinator is unreachable")

// controlErr wraps a control-plane error, marking a coordinator that is gone.
func controlErr(what string, err error) error {
	if status.Code(err) == codes.Unavailable {
		return fmt.Errorf("%w: %s: %v", errCoordinatorLost, what, err)
	}
	return fmt.Errorf("worker: %s: %w", what, err)
}

// waitForCoordinator joins the cluster through addr until a coordinator is in
// it, or deadline. (The gossip may list the dead one for a few seconds more:
// registering with it fails, and the caller comes back here.)
func waitForCoordinator(ctx context.Context, member *membership.Member, addr string, deadline time.Time) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		member.Rejoin(addr) // fails while nobody listens there
		if _, err := member.Coordinator(time.Second); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return membership.ErrNoCoordinator
		}
	}
}

// unsentReport is an epoch's report that found no coordinator. The workers
// train to the end of the epoch that the coordinator died in; the one that
// resumes the job starts after that epoch and takes the report again, so the
// epoch keeps its line and its row in metrics.csv.
type unsentReport struct {
	report *controlpb.EpochReport
	world  int32
}

// resend gives the coordinator of plan the report the last one did not take,
// when this rank goes on from the state of the reported epoch (start epochs
// done) in a ring of the same size.
func (u *unsentReport) resend(ctx context.Context, control controlpb.ControlClient, plan *controlpb.JobPlan, start int, log *zap.Logger) error {
	rep := u.report
	u.report = nil
	if rep == nil {
		return nil
	}
	if rep.JobId != plan.JobId || int(rep.Epoch) != start || u.world != plan.World {
		log.Warn("dropping the report the lost coordinator did not take: the job goes on from elsewhere",
			zap.Int32("report_epoch", rep.Epoch), zap.Int("start_epoch", start), zap.Int32("world", u.world), zap.Int32("plan_world", plan.World))
		return nil
	}
	rep.Generation = plan.Generation
	reply, err := control.Report(ctx, rep)
	if err != nil {
		return controlErr(fmt.Sprintf("report epoch %d again", rep.Epoch), err)
	}
	if reply.Stop {
		return fmt.Errorf("worker: the coordinator stopped the job: %s", reply.Reason)
	}
	return nil
}

// runJob finds the coordinator, registers and trains until the job ends;
// registered says whether the coordinator took this worker.
func runJob(ctx context.Context, jc *JoinConfig, node *allreduce.Node, member *membership.Member, unsent *unsentReport, log *zap.Logger) (registered bool, err error) {
	j := &job{jc: jc, node: node, unsent: unsent, log: log}
	conn, err := j.register(ctx, member)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if err := j.configure(); err != nil {
		return true, err
	}
	ring, err := j.openRing(ctx)
	if err != nil {
		return true, err
	}
	j.current.set(ring, j.plan.Peers)
	defer func() { j.current.ring().Close() }()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go j.watchPeers(watchCtx, member)

	t, err := j.startTrainer(ctx, ring)
	if err != nil {
		return true, err
	}
	defer t.Close()
	for {
		err := t.SyncState(ctx, int(j.plan.StateRoot))
		if err == nil {
			err = t.Run(ctx)
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil || !(errors.Is(err, allreduce.ErrPeerLost) || errors.Is(err, errReform)) {
			return true, err
		}
		if err := j.reform(ctx, t, err); err != nil {
			return true, err
		}
	}
	// Leave together: no rank closes its ring while another still sends.
	if err := j.current.ring().Barrier(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return true, fmt.Errorf("worker: final barrier: %w", err)
	}
	log.Info("job done", zap.Int("rank", int(j.plan.Rank)))
	return true, nil
}

// job is this rank's part in one coordinator's job: the control connection,
// the coordinator's current plan (a re-formed ring brings a new one), the
// ring it names and the job's config.
type job struct {
	jc      *JoinConfig
	node    *allreduce.Node
	unsent  *unsentReport
	log     *zap.Logger
	control controlpb.ControlClient
	plan    *controlpb.JobPlan
	cfg     Config
	current ringWatch
}

// register finds the coordinator through the gossip and registers with it,
// which gives j its plan; the caller closes the control connection.
func (j *job) register(ctx context.Context, member *membership.Member) (*grpc.ClientConn, error) {
	coord, err := member.Coordinator(10 * time.Second)
	if err != nil {
		return nil, fmt.Errorf("worker: %w (joined through %s)", err, j.jc.Join)
	}
	creds := j.jc.Security.ClientCreds()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(coord.Meta.GRPC, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("worker: coordinator control address %q: %w", coord.Meta.GRPC, err)
	}
	j.control = controlpb.NewControlClient(conn)
	j.log.Info("registering with the coordinator", zap.String("coordinator", coord.Meta.GRPC), zap.String("name", j.jc.Name))
	regCtx, cancel := context.WithTimeout(ctx, j.jc.StartTimeout)
	defer cancel()
	plan, err := j.control.Register(regCtx, &controlpb.RegisterRequest{JobId: j.jc.Job, Name: j.jc.Name, RingAddr: j.node.Addr, Device: j.jc.Compute.Device})
	if err != nil {
		conn.Close()
		return nil, controlErr("register with the coordinator at "+coord.Meta.GRPC, err)
	}
	j.plan = plan
	j.jc.Job = plan.JobId // a coordinator that comes back must run the same job
	j.log.Info("job plan received", zap.Int("rank", int(plan.Rank)), zap.String("job", plan.JobId), zap.Int("world", int(plan.World)), zap.String("ring", plan.RingId))
	return conn, nil
}

// configure takes the job's config from the plan.
func (j *job) configure() error {
	j.cfg = DefaultConfig()
	if err := json.Unmarshal(j.plan.ConfigJson, &j.cfg); err != nil {
		return fmt.Errorf("worker: the coordinator's job config: %w", err)
	}
	if j.jc.Data != "" {
		j.cfg.Data = j.jc.Data
	}
	// The ring's batch per rank, which a re-formed ring may have changed (its
	// world need not divide the global batch).
	j.cfg.WorkerBatchSize = int(j.plan.BatchPerRank)
	return nil
}

// openRing joins the ring of the current plan.
func (j *job) openRing(ctx context.Context) (*allreduce.Ring, error) {
	rcfg := allreduce.DefaultConfig()
	rcfg.RingID, rcfg.Rank, rcfg.World, rcfg.Peers = j.plan.RingId, int(j.plan.Rank), int(j.plan.World), j.plan.Peers
	rcfg.ChunkBytes, rcfg.FP16, rcfg.OpTimeout = j.cfg.Ring.ChunkBytes, j.cfg.Ring.FP16, j.cfg.Ring.OpTimeout
	rcfg.Creds = j.jc.Security.ClientCreds()
	return allreduce.Open(ctx, j.node.Service, rcfg, j.log)
}

// watchPeers fails the collective waiting on a peer that leaves the gossip now
// rather than at its deadline.
func (j *job) watchPeers(ctx context.Context, member *membership.Member) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-member.Events():
			if e.Kind == membership.Left && e.Meta.Role == membership.RoleWorker {
				j.current.fail(e.Meta.GRPC, fmt.Sprintf("%s left the cluster", e.Name))
			}
		}
	}
}

// startTrainer makes the trainer of the job's config on ring, at the plan's
// position, and gives the coordinator the report its predecessor lost.
func (j *job) startTrainer(ctx context.Context, ring *allreduce.Ring) (_ *Trainer, err error) {
	t, err := NewTrainer(j.cfg, ring, j.jc.Compute, j.log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	t.Telemetry = j.jc.Telemetry
	j.jc.Telemetry.Timeline.NameProcess(fmt.Sprintf("rank %d (%s)", j.plan.Rank, j.jc.Name))
	if fp := t.train.Fingerprint(); fp != j.plan.Dataset {
		return nil, fmt.Errorf("worker: %s lists different files than the coordinator's (fingerprint %016x, coordinator %016x)", j.cfg.Data, fp, j.plan.Dataset)
	}
	if j.plan.Generation > 1 { // joining a running job: its epoch, not the config's resume file's
		if err := t.Reconfigure(ring, int(j.plan.BatchPerRank), int(j.plan.Epoch)); err != nil {
			return nil, err
		}
	}
	// The state loaded (the file as it is now, which may be newer than what
	// the coordinator read when it resumed) says where this rank starts.
	start, _ := t.Position()
	if err := j.unsent.resend(ctx, j.control, j.plan, start, j.log); err != nil {
		return nil, err
	}
	t.EpochPlan = j.epochShard
	t.OnEpoch = func(r EpochResult) error { return j.report(ctx, r) }
	return t, nil
}

// epochShard asks the coordinator for the shard plan of an epoch.
func (j *job) epochShard(ctx context.Context, epoch int) (sharding.Plan, error) {
	s, err := j.control.EpochShard(ctx, &controlpb.EpochRequest{JobId: j.plan.JobId, Rank: j.plan.Rank, Epoch: int32(epoch), Generation: j.plan.Generation})
	if err != nil {
		return sharding.Plan{}, controlErr("epoch shard", err)
	}
	if s.Reform {
		return sharding.Plan{}, errReform
	}
	p := sharding.Plan{Seed: s.Seed, Epoch: int(s.Epoch), World: int(s.World), Size: int(s.Size),
		Dataset: s.Dataset, DropLast: s.DropLast, Shuffle: s.Shuffle}
	for _, seg := range s.Prior {
		p.Prior = append(p.Prior, sharding.Segment{World: int(seg.World), Consumed: int(seg.Consumed)})
	}
	return p, nil
}

// report gives the coordinator an epoch's result; a report that finds no
// coordinator is kept for the one that resumes the job.
func (j *job) report(ctx context.Context, r EpochResult) error {
	plan := j.plan
	j.log.Info("epoch done", zap.Int("rank", int(plan.Rank)), zap.Int("epoch", r.Epoch), zap.Float64("train_loss", r.TrainLoss),
		zap.Float64("img_per_s", float64(r.Images)/r.Duration.Seconds()), zap.Uint64("checksum", r.Checksum), zap.Int("bad_files", r.BadFiles), zap.Int("skipped_steps", r.Skipped))
	rep := &controlpb.EpochReport{
		JobId: plan.JobId, Rank: plan.Rank, Epoch: int32(r.Epoch), TrainLoss: r.TrainLoss, ValAccuracy: r.ValAccuracy,
		ImagesPerS: float64(r.Images) / r.Duration.Seconds(), Checksum: r.Checksum, Best: r.Best,
		Images: int32(r.Images), Seconds: r.Duration.Seconds(), Generation: plan.Generation,
	}
	reply, err := j.control.Report(ctx, rep)
	if err != nil {
		err = controlErr(fmt.Sprintf("report epoch %d", r.Epoch), err)
		if errors.Is(err, errCoordinatorLost) {
			j.unsent.report, j.unsent.world = rep, plan.World
		}
		return err
	}
	if reply.Stop {
		return fmt.Errorf("worker: the coordinator stopped the job: %s", reply.Reason)
	}
	if reply.Reform {
		return errReform
	}
	return nil
}

// reform asks the coordinator for a new ring after broke ended the last one (a
// peer died or fell silent, or the coordinator re-forms it), joins it and
// moves the trainer there; the survivors go on from the furthest step.
func (j *job) reform(ctx context.Context, t *Trainer, broke error) error {
	since := time.Now()
	epoch, steps := t.Position()
	j.log.Warn("ring broken; asking the coordinator for a new one", zap.Int("rank", int(j.plan.Rank)), zap.Int("generation", int(j.plan.Generation)),
		zap.Int("epoch", epoch+1), zap.Int("steps_done", steps), zap.Error(broke))
	lost := int32(-1)
	if pe := (*allreduce.PeerError)(nil); errors.As(broke, &pe) {
		lost = int32(pe.Rank)
	}
	next, err := j.control.Reform(ctx, &controlpb.ReformRequest{JobId: j.plan.JobId, Name: j.jc.Name, Generation: j.plan.Generation,
		Epoch: int32(epoch), Steps: int32(steps), Reason: broke.Error(), LostRank: lost})
	if err != nil {
		return fmt.Errorf("worker: re-forming the ring after %v: %w", broke, controlErr("reform", err))
	}
	j.current.ring().Close()
	j.plan = next
	ring, err := j.openRing(ctx)
	if err != nil {
		return fmt.Errorf("worker: joining re-formed ring %d: %w", next.Generation, err)
	}
	j.current.set(ring, next.Peers)
	if err := t.Reconfigure(ring, int(next.BatchPerRank), int(next.Epoch)); err != nil {
		return err
	}
	j.jc.Telemetry.Timeline.NameProcess(fmt.Sprintf("rank %d (%s)", next.Rank, j.jc.Name))
	j.log.Info("ring re-formed; training resumes", zap.Int("rank", int(next.Rank)), zap.Int("world", int(next.World)),
		zap.Int("generation", int(next.Generation)), zap.Int("epoch", int(next.Epoch)+1), zap.Int("batch_per_rank", int(next.BatchPerRank)),
		zap.Int("state_from_rank", int(next.StateRoot)), zap.Duration("stalled", time.Since(since)))
	return nil
}

// errReform is the coordinator saying that the ring is being re-formed.
var errReform = errors.New("worker: the coordinator is re-forming the ring")

// ringWatch is the current ring and its members' addresses, shared with the
// goroutine that fails the ring when the gossip loses one of them.
type ringWatch struct {
	mu    sync.Mutex
	r     *allreduce.Ring
	ranks map[string]int // ring address -> rank
}

func (w *ringWatch) set(r *allreduce.Ring, peers []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.r, w.ranks = r, map[string]int{}
	for rank, addr := range peers {
		w.ranks[addr] = rank
	}
}

func (w *ringWatch) ring() *allreduce.Ring {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.r
}

func (w *ringWatch) fail(addr, reason string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if rank, ok := w.ranks[addr]; ok {
		w.r.Fail(rank, reason)
	}
}

// DefaultJoinConfig is a worker on this machine joining a coordinator on its
// default gossip port.
func DefaultJoinConfig() JoinConfig {
	host, _ := os.Hostname()
	return JoinConfig{
		Join: "127.0.0.1:7946", Bind: "127.0.0.1:0", RingAddr: "127.0.0.1:0",
		Name: fmt.Sprintf("%s-%d", host, os.Getpid()), Compute: alexnet.CPUCompute(),
		JoinTimeout: 30 * time.Second, StartTimeout: 10 * time.Minute, CoordinatorGrace: 2 * time.Minute,
	}
}
