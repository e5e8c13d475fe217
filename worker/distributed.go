package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/allreduce"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
	"github.com/alexring/alexring/internal/cluster/membership"
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
	// EvalBatch, LoaderGoroutines and StepLog, when set, override the job's
	// too: like Data, they are this worker's own (its memory, cores, logs).
	EvalBatch, LoaderGoroutines, StepLog int
	// StartTimeout bounds the wait for the job to start once registered, and
	// every control call that waits for the other workers (see
	// controlDeadlines).
	StartTimeout time.Duration
	Local        bool               // loopback-tuned failure detection
	Security     *security.Material // gossip key and mTLS (nil: neither)
	Job          string             // the job to join; empty: whichever the coordinator runs
	// CoordinatorGrace is how long a worker that lost its coordinator waits
	// for one to come back (restarted with --resume) before it gives up.
	CoordinatorGrace time.Duration
	Telemetry        Telemetry // progress bars, metrics, timeline
}

// own sets this worker's own settings over the job's cfg, those set.
func (jc *JoinConfig) own(cfg *configs.Job) {
	if jc.Data != "" {
		cfg.Data = jc.Data
	}
	if jc.EvalBatch > 0 {
		cfg.EvalBatch = jc.EvalBatch
	}
	if jc.LoaderGoroutines > 0 {
		cfg.LoaderGoroutines = jc.LoaderGoroutines
	}
	if jc.StepLog > 0 {
		cfg.StepLog = jc.StepLog
	}
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
	member, err := membership.Start(ctx, membership.Config{
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
			return fmt.Errorf("%w; no coordinator came back within --coordinator-grace %v", err, jc.CoordinatorGrace) // err begins "worker: "
		}
	}
}

// errCoordinatorLost marks a control call that found no coordinator, or none
// that answered within the call's deadline.
var errCoordinatorLost = errors.New("worker: the coordinator is unreachable")

// waitForCoordinator joins the cluster through addr until a coordinator is in
// it, or deadline. (The gossip may list a dead or cut-off one for a while:
// registering with it fails, and the caller comes back here, so the deadline
// is checked on every round, not only when the gossip has no coordinator.)
func waitForCoordinator(ctx context.Context, member *membership.Member, addr string, deadline time.Time) error {
	for {
		if time.Now().After(deadline) {
			return membership.ErrNoCoordinator
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		member.Rejoin(addr) // fails while nobody listens there
		if _, err := member.Coordinator(ctx, time.Second); err == nil {
			return nil
		}
	}
}

// The control connection's liveness. The coordinator's gRPC server keeps
// gRPC's default keepalive policy, which closes a connection that pings more
// often than every 5 minutes (so not every 10 s, as the ring's do), so the
// connection relies mostly on TCP: keepalive probes on an idle connection,
// and TCP_USER_TIMEOUT on a request sent and never acknowledged (gRPC sets it
// to the ping timeout). Either way a link cut fails the call on it within
// about controlDeadAfter, as codes.Unavailable.
const (
	controlPingEvery = 5 * time.Minute
	controlDeadAfter = 20 * time.Second
)

// dialControl dials the coordinator's control address; a variable so that
// tests can look at the socket.
var dialControl = func(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 2}}
	return d.DialContext(ctx, "tcp", addr)
}

// controlDeadlines bound the control calls, each by the longest the
// coordinator can legitimately take to answer it (see its handlers):
//
//   - answer: EpochShard, which it answers from its state at once; the ring's
//     op_timeout, the job's measure of a peer gone silent.
//   - start: Register (the job's start, or for a late joiner the next epoch
//     boundary) and the report resent to a resumed coordinator (every rank
//     resends once its trainer is built): the worker's StartTimeout.
//   - reform: Reform, which waits for the ring's other survivors (the
//     coordinator's --reform-timeout, 1m by default) and, below
//     --min-workers, for joiners (--wait-timeout, 5m): StartTimeout, or more
//     when the plan carries the coordinator's timeouts.
//   - Report waits for every rank's report of the epoch: the ranks end the
//     epoch together, then rank 0 validates and writes the checkpoints. It
//     gets start plus the time rank 0 needs to validate at no more than this
//     rank's training time per image (a training image costs a forward, a
//     backward and an all-reduce; a validation image a forward): see
//     reportDeadline.
//
// A coordinator that is down or cut off is found sooner, by the connection's
// liveness; these bound one that is reachable but does not answer.
type controlDeadlines struct {
	answer, start, reform time.Duration
}

// coordinatorTimeouts are the coordinator's own waits, when its plan carries
// them (reform_timeout, wait_timeout).
type coordinatorTimeouts struct {
	ReformTimeout, WaitTimeout time.Duration
}

// deadlinesFor are the deadlines of a job with config cfg, whose plan carried
// the coordinator's timeouts ct (zero when it did not).
func deadlinesFor(jc *JoinConfig, cfg configs.Job, ct coordinatorTimeouts) controlDeadlines {
	d := controlDeadlines{answer: cfg.Ring.OpTimeout, start: jc.StartTimeout, reform: jc.StartTimeout}
	if ct.ReformTimeout > 0 {
		d.reform = max(d.reform, sumDurations(ct.ReformTimeout, ct.WaitTimeout, cfg.Ring.OpTimeout))
	}
	return d
}

// reportDeadline bounds the Report of epoch r (see controlDeadlines).
func (d controlDeadlines) reportDeadline(r EpochResult, valImages int) time.Duration {
	perImage := r.Duration
	if r.Images > 0 {
		perImage = r.Duration / time.Duration(r.Images)
	}
	validation := time.Duration(math.MaxInt64)
	if perImage <= 0 || valImages <= 0 {
		validation = 0
	} else if int64(valImages) < math.MaxInt64/int64(perImage) {
		validation = time.Duration(valImages) * perImage
	}
	return sumDurations(d.start, validation)
}

// sumDurations adds the positive ds, saturating rather than overflowing (a
// negative deadline would fire at once).
func sumDurations(ds ...time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		if d <= 0 {
			continue
		}
		if sum > math.MaxInt64-d {
			return math.MaxInt64
		}
		sum += d
	}
	return sum
}

// waitLogAfter is how long a control call may wait before the wait is logged
// (a variable for tests): the coordinator answers at once unless it waits for
// other workers, or cannot be reached.
var waitLogAfter = 5 * time.Second

// call runs one control call, rpc, under the deadline limit. A call still
// waiting after waitLogAfter is logged once, saying what it waits for and for
// how long at most; the wait shows in the metrics meanwhile. A deadline
// passed means the coordinator is lost, unless final (Register's
// StartTimeout: the job did not start in time).
func (j *job) call(ctx context.Context, what, waitsFor string, limit time.Duration, final bool, rpc func(context.Context) error) error {
	callCtx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	m := j.jc.Telemetry.Metrics
	m.waitingForCoordinator(start)
	logged := make(chan struct{})
	timer := time.AfterFunc(waitLogAfter, func() {
		defer close(logged)
		j.log.Info("waiting for the coordinator", zap.String("call", what), zap.String("waits_for", waitsFor),
			zap.String("coordinator", j.addr), zap.Duration("at_most", limit))
	})
	err := rpc(callCtx)
	if !timer.Stop() {
		<-logged
		j.log.Info("the coordinator answered", zap.String("call", what), zap.Duration("waited", time.Since(start)), zap.Bool("ok", err == nil))
	}
	m.waitingForCoordinator(time.Time{})
	if err == nil {
		return nil
	}
	if !final && status.Code(err) == codes.DeadlineExceeded && ctx.Err() == nil {
		return fmt.Errorf("%w: %s: no answer from the coordinator at %s within %v: %w", errCoordinatorLost, what, j.addr, limit, err)
	}
	return j.controlErr(what, err)
}

// controlErr wraps a control-plane error, naming the coordinator and marking
// one that is gone. A TLS handshake that either side refused is final: the
// same certificates are refused again, however long one waits.
func (j *job) controlErr(what string, err error) error {
	if status.Code(err) == codes.Unavailable {
		if j.watch != nil {
			if refused := j.watch.Refused(); refused != nil {
				return fmt.Errorf("worker: %s: the TLS handshake with the coordinator at %s was refused (a certificate of another CA, or for another name?): %w", what, j.addr, refused)
			}
		}
		return fmt.Errorf("%w: %s at %s: %w", errCoordinatorLost, what, j.addr, err)
	}
	return fmt.Errorf("worker: %s (coordinator %s): %w", what, j.addr, err)
}

// unsentReport is an epoch's report that found no coordinator. The workers
// train to the end of the epoch that the coordinator died in; the one that
// resumes the job starts after that epoch and takes the report again, so the
// epoch keeps its line and its row in metrics.csv.
type unsentReport struct {
	report *controlpb.EpochReport
	world  int32
}

// resend gives j's coordinator the report the last one did not take, when
// this rank goes on from the state of the reported epoch (start epochs done)
// in a ring of the same size.
func (u *unsentReport) resend(ctx context.Context, j *job, start int) error {
	rep, plan := u.report, j.plan
	u.report = nil
	if rep == nil {
		return nil
	}
	if rep.JobId != plan.JobId || int(rep.Epoch) != start || u.world != plan.World {
		j.log.Warn("dropping the report the lost coordinator did not take: the job goes on from elsewhere",
			zap.Int32("report_epoch", rep.Epoch), zap.Int("start_epoch", start), zap.Int32("world", u.world), zap.Int32("plan_world", plan.World))
		return nil
	}
	rep.Generation = plan.Generation
	var reply *controlpb.ReportReply
	err := j.call(ctx, fmt.Sprintf("report epoch %d again", rep.Epoch), "every rank's report of that epoch", j.deadlines.start, false,
		func(ctx context.Context) (err error) {
			reply, err = j.control.Report(ctx, rep)
			return err
		})
	if err != nil {
		return err
	}
	if err := verdict(reply); err != nil && !errors.Is(err, errReform) {
		return err
	}
	return nil
}

// verdict is what the coordinator's reply to a report says to do: stop (an
// error naming its reason), re-form the ring (errReform), or go on (nil).
func verdict(reply *controlpb.ReportReply) error {
	switch {
	case reply.Stop:
		return fmt.Errorf("worker: the coordinator stopped the job: %s", reply.Reason)
	case reply.Reform:
		return errReform
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
	ring, err := j.openRing(ctx)
	if err != nil && (errors.Is(err, allreduce.ErrPeerLost) || errors.Is(err, errSuperseded)) && ctx.Err() == nil {
		ring, err = j.reopen(ctx, int(j.plan.Epoch), 0, fmt.Errorf("opening ring %d: %w", j.plan.Generation, err))
	}
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
	jc        *JoinConfig
	node      *allreduce.Node
	unsent    *unsentReport
	log       *zap.Logger
	addr      string                   // the coordinator's control address
	watch     *security.HandshakeWatch // the control connection's TLS handshakes (nil: plaintext)
	control   controlpb.ControlClient
	plan      *controlpb.JobPlan
	cfg       configs.Job
	deadlines controlDeadlines
	current   ringWatch
}

// register finds the coordinator through the gossip and registers with it,
// which gives j its plan; the caller closes the control connection.
func (j *job) register(ctx context.Context, member *membership.Member) (*grpc.ClientConn, error) {
	coord, err := member.Coordinator(ctx, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("worker: %w (joined through %s)", err, j.jc.Join)
	}
	return j.registerAt(ctx, coord.Meta.GRPC)
}

// registerAt registers with the coordinator at its control address addr.
func (j *job) registerAt(ctx context.Context, addr string) (*grpc.ClientConn, error) {
	j.addr = addr
	var creds credentials.TransportCredentials = insecure.NewCredentials()
	if tc := j.jc.Security.ClientCreds(); tc != nil {
		j.watch = security.WatchHandshakes(tc)
		creds = j.watch
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithContextDialer(dialControl),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: controlPingEvery, Timeout: controlDeadAfter}))
	if err != nil {
		return nil, fmt.Errorf("worker: coordinator control address %q: %w", addr, err)
	}
	j.control = controlpb.NewControlClient(conn)
	j.log.Info("registering with the coordinator", zap.String("coordinator", addr), zap.String("name", j.jc.Name))
	var plan *controlpb.JobPlan
	err = j.call(ctx, "register", "the job to start (or, joining late, the next epoch boundary)", j.jc.StartTimeout, true,
		func(ctx context.Context) (err error) {
			plan, err = j.control.Register(ctx, &controlpb.RegisterRequest{JobId: j.jc.Job, Name: j.jc.Name, RingAddr: j.node.Addr, Device: j.jc.Compute.Device,
				LocalAddr: j.node.Local, Host: allreduce.HostID()})
			return err
		})
	if err == nil {
		err = j.accept(plan, 0)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	j.jc.Job = plan.JobId // a coordinator that comes back must run the same job
	j.log.Info("job plan received", zap.Int("rank", int(plan.Rank)), zap.String("job", plan.JobId), zap.Int("world", int(plan.World)), zap.String("ring", plan.RingId),
		zap.String("data", j.cfg.Data), zap.Int("eval_batch", j.cfg.EvalBatch), zap.Int("loader_goroutines", j.cfg.LoaderGoroutines))
	return conn, nil
}

// Bounds on what a plan may ask for, past which it is a corrupt message rather
// than a job: more ranks than any ring here runs, more re-formations within
// one epoch than any job makes. They keep what a plan makes this worker
// allocate (the ring's tables, an epoch's sharding) in proportion.
const (
	maxWorld      = 1 << 16
	maxPriorRings = 1 << 10
)

// accept checks plan, the coordinator's answer to Register (after 0) or to
// Reform (after the broken ring's generation), and takes it with its job
// config: a plan this worker cannot follow is refused with an error naming
// the coordinator, before anything is built from it.
func (j *job) accept(plan *controlpb.JobPlan, after int32) error {
	if err := checkPlan(plan, j.node.Addr, j.jc.Job, after); err != nil {
		return fmt.Errorf("worker: the coordinator at %s sent a bad plan: %w", j.addr, err)
	}
	if plan.Settings == nil {
		return fmt.Errorf("worker: the coordinator at %s sent a bad plan: no job settings", j.addr)
	}
	cfg := plan.Settings.Job()
	ct := coordinatorTimeouts{ReformTimeout: plan.ReformTimeout.AsDuration(), WaitTimeout: plan.WaitTimeout.AsDuration()}
	j.jc.own(&cfg)
	// A rank's batch is the config's share of the global batch or its
	// worker_batch; the plan's may differ (a re-formed ring's world need not
	// divide the global batch) but not exceed them.
	if limit := max(cfg.Batch, cfg.WorkerBatchSize); int(plan.BatchPerRank) > limit {
		return fmt.Errorf("worker: the coordinator at %s sent a bad plan: batch per rank %d, more than the job's batch %d", j.addr, plan.BatchPerRank, limit)
	}
	cfg.WorkerBatchSize = int(plan.BatchPerRank)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("worker: the job config of the coordinator at %s: %w", j.addr, err)
	}
	if int(plan.Epoch) > cfg.Epochs {
		return fmt.Errorf("worker: the coordinator at %s sent a bad plan: it starts in epoch %d of %d", j.addr, plan.Epoch+1, cfg.Epochs)
	}
	j.plan, j.cfg, j.deadlines = plan, cfg, deadlinesFor(j.jc, cfg, ct)
	return nil
}

// checkPlan reports what makes plan impossible for the worker at ringAddr in
// job (empty: any) to follow, after the ring of generation after.
func checkPlan(p *controlpb.JobPlan, ringAddr, job string, after int32) error {
	switch {
	case p.JobId == "":
		return errors.New("no job id")
	case job != "" && p.JobId != job:
		return fmt.Errorf("job %q, not %q", p.JobId, job)
	case p.RingId == "":
		return errors.New("no ring id")
	case p.World < 1 || p.World > maxWorld:
		return fmt.Errorf("world size %d, want 1 to %d", p.World, maxWorld)
	case len(p.Peers) != int(p.World):
		return fmt.Errorf("%d ring addresses for a world of %d", len(p.Peers), p.World)
	case p.LocalPeers != nil && len(p.LocalPeers) != int(p.World):
		return fmt.Errorf("%d local ring sockets for a world of %d", len(p.LocalPeers), p.World)
	case p.Rank < 0 || p.Rank >= p.World:
		return fmt.Errorf("rank %d outside the world of %d", p.Rank, p.World)
	case p.Peers[p.Rank] != ringAddr:
		return fmt.Errorf("rank %d's ring address is %q, not this worker's %s", p.Rank, p.Peers[p.Rank], ringAddr)
	case p.StateRoot < 0 || p.StateRoot >= p.World:
		return fmt.Errorf("state from rank %d, outside the world of %d", p.StateRoot, p.World)
	case p.Generation <= after:
		return fmt.Errorf("ring generation %d, want one after %d", p.Generation, after)
	case p.BatchPerRank < 1:
		return fmt.Errorf("batch per rank %d", p.BatchPerRank)
	case p.Epoch < 0:
		return fmt.Errorf("start epoch %d", p.Epoch)
	}
	seen := make(map[string]int, len(p.Peers))
	for r, addr := range p.Peers {
		if addr == "" {
			return fmt.Errorf("rank %d has no ring address", r)
		}
		if q, dup := seen[addr]; dup {
			return fmt.Errorf("ranks %d and %d share the ring address %s", q, r, addr)
		}
		seen[addr] = r
	}
	return nil
}

// openRing joins the ring of the current plan. Its peers have the ring's
// op_timeout to connect: they open it as soon as the coordinator's plan
// reaches them, and a rank that fails to open it must ask the coordinator
// again while the coordinator still waits for it (--reform-timeout).
func (j *job) openRing(ctx context.Context) (*allreduce.Ring, error) {
	rcfg := allreduce.DefaultConfig()
	rcfg.RingID, rcfg.Rank, rcfg.World, rcfg.Peers = j.plan.RingId, int(j.plan.Rank), int(j.plan.World), j.plan.Peers
	rcfg.LocalPeers = j.plan.LocalPeers // the ranks on this host, over Unix sockets
	rcfg.ChunkBytes, rcfg.FP16, rcfg.OpTimeout = j.cfg.Ring.ChunkBytes, j.cfg.Ring.FP16, j.cfg.Ring.OpTimeout
	rcfg.ConnectTimeout = j.cfg.Ring.OpTimeout
	rcfg.Creds = j.jc.Security.ClientCreds()
	// A peer that died after the plan was made (a survivor killed once it
	// had asked for its place) never connects: the coordinator learns it (the
	// gossip, or the peer's restart registering) and re-forms, but a rank
	// waiting in the open would wait out ConnectTimeout before asking. So
	// the open ends as soon as the coordinator says the ring is superseded.
	octx, cancel := context.WithCancelCause(ctx)
	probe := &controlpb.EpochRequest{JobId: j.plan.JobId, Rank: j.plan.Rank, Epoch: -1, Generation: j.plan.Generation}
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		watchSuperseded(octx, j.control, probe, cancel)
	}()
	defer func() { cancel(nil); <-watched }()
	ring, err := allreduce.Open(octx, j.node.Service, rcfg, j.log)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(octx), errSuperseded) {
		return nil, fmt.Errorf("%w (the open: %v)", errSuperseded, err)
	}
	return ring, err
}

// errSuperseded is the coordinator saying, while this rank opened its ring,
// that the ring is being re-formed: a peer of it is gone.
var errSuperseded = errors.New("worker: the coordinator re-forms the ring being opened")

// supersededPoll is how often a rank opening its ring asks the coordinator
// whether that ring still stands (a variable for tests).
var supersededPoll = 250 * time.Millisecond

// watchSuperseded asks the coordinator, until ctx ends, whether the ring of
// the plan is being re-formed, and cancels ctx with errSuperseded if so. The
// question (req) is an EpochShard of epoch -1, which a coordinator answers
// with its Reform flag only; errors (a coordinator gone) are left to the
// open.
func watchSuperseded(ctx context.Context, control controlpb.ControlClient, req *controlpb.EpochRequest, cancel context.CancelCauseFunc) {
	t := time.NewTicker(supersededPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		s, err := control.EpochShard(cctx, req)
		ccancel()
		if err == nil && s.Reform {
			cancel(errSuperseded)
			return
		}
	}
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
	cfg := j.cfg
	// The rank whose state the others take (SyncState) reads --init: rank 0
	// of a first ring, or the root of a ring that replaced one that never
	// opened (as fresh as this rank). A rank joining a later ring takes the
	// ring's state, not the file's.
	initRank := int(j.plan.StateRoot)
	if j.plan.Generation > 1 && j.plan.Rank != j.plan.StateRoot {
		cfg.Init = ""
	}
	t, err := newTrainer(cfg, initRank, ring, j.jc.Compute, Controller{
		Plan:      j.epochShard,
		EpochDone: func(ctx context.Context, r EpochResult) error { return j.report(ctx, r, r.ValImages) },
		Telemetry: j.jc.Telemetry,
	}, j.log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
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
	if err := j.unsent.resend(ctx, j, start); err != nil {
		return nil, err
	}
	return t, nil
}

// epochShard asks the coordinator for the shard plan of an epoch.
func (j *job) epochShard(ctx context.Context, epoch int) (sharding.Plan, error) {
	var s *controlpb.Shard
	err := j.call(ctx, fmt.Sprintf("epoch %d shard", epoch+1), "the epoch's sharding", j.deadlines.answer, false,
		func(ctx context.Context) (err error) {
			s, err = j.control.EpochShard(ctx, &controlpb.EpochRequest{JobId: j.plan.JobId, Rank: j.plan.Rank, Epoch: int32(epoch), Generation: j.plan.Generation})
			return err
		})
	if err != nil {
		return sharding.Plan{}, err
	}
	p, err := shardPlan(s, int(j.plan.World))
	if err != nil {
		return sharding.Plan{}, fmt.Errorf("worker: the coordinator at %s sent a bad shard of epoch %d: %w", j.addr, epoch+1, err)
	}
	return p, nil
}

// shardPlan is the sharding a Shard message gives a ring of world ranks
// (errReform when it says the ring is re-forming). What the trainer checks
// against its own data (seed, epoch, size, fingerprint) is left to it; what
// would make sharding allocate out of proportion (the worlds of earlier rings,
// their number) is refused here.
func shardPlan(s *controlpb.Shard, world int) (sharding.Plan, error) {
	if s.Reform {
		return sharding.Plan{}, errReform
	}
	if int(s.World) != world {
		return sharding.Plan{}, fmt.Errorf("a world of %d, not this ring's %d", s.World, world)
	}
	if len(s.Prior) > maxPriorRings {
		return sharding.Plan{}, fmt.Errorf("%d earlier rings in one epoch, more than %d", len(s.Prior), maxPriorRings)
	}
	p := sharding.Plan{Seed: s.Seed, Epoch: int(s.Epoch), World: int(s.World), Size: int(s.Size),
		Dataset: s.Dataset, DropLast: s.DropLast, Shuffle: s.Shuffle}
	for i, seg := range s.Prior {
		if seg.GetWorld() < 1 || seg.GetWorld() > maxWorld || seg.GetConsumed() < 0 {
			return sharding.Plan{}, fmt.Errorf("earlier ring %d: world %d, %d consumed", i+1, seg.GetWorld(), seg.GetConsumed())
		}
		p.Prior = append(p.Prior, sharding.Segment{World: int(seg.World), Consumed: int(seg.Consumed)})
	}
	return p, nil
}

// report gives the coordinator an epoch's result; a report that finds no
// coordinator is kept for the one that resumes the job.
func (j *job) report(ctx context.Context, r EpochResult, valImages int) error {
	plan := j.plan
	j.log.Info("epoch done", zap.Int("rank", int(plan.Rank)), zap.Int("epoch", r.Epoch), zap.Float64("train_loss", r.TrainLoss),
		zap.Float64("img_per_s", float64(r.Images)/r.Duration.Seconds()), zap.Uint64("checksum", r.Checksum), zap.Int("bad_train_files", r.BadTrainFiles), zap.Int("bad_val_files", r.BadValFiles), zap.Int("skipped_steps", r.Skipped), peakRSSField())
	rep := &controlpb.EpochReport{
		JobId: plan.JobId, Rank: plan.Rank, Epoch: int32(r.Epoch), TrainLoss: r.TrainLoss, ValAccuracy: r.ValAccuracy,
		ImagesPerS: float64(r.Images) / r.Duration.Seconds(), Checksum: r.Checksum, Best: r.Best,
		Images: int32(r.Images), Seconds: r.Duration.Seconds(), Generation: plan.Generation,
	}
	var reply *controlpb.ReportReply
	err := j.call(ctx, fmt.Sprintf("report epoch %d", r.Epoch), "every rank's report of the epoch (rank 0 validates first)", j.deadlines.reportDeadline(r, valImages), false,
		func(ctx context.Context) (err error) {
			reply, err = j.control.Report(ctx, rep)
			return err
		})
	if err != nil {
		if errors.Is(err, errCoordinatorLost) {
			j.unsent.report, j.unsent.world = rep, plan.World
		}
		return err
	}
	return verdict(reply)
}

// reform asks the coordinator for a new ring after broke ended the last one (a
// peer died or fell silent, or the coordinator re-forms it), joins it and
// moves the trainer there; the survivors go on from the furthest step.
func (j *job) reform(ctx context.Context, t *Trainer, broke error) error {
	since := time.Now()
	epoch, steps := t.Position()
	j.log.Warn("ring broken; asking the coordinator for a new one", zap.Int("rank", int(j.plan.Rank)), zap.Int("generation", int(j.plan.Generation)),
		zap.Int("epoch", epoch+1), zap.Int("steps_done", steps), zap.Int32("lost_rank", lostPeer(broke)), zap.Error(broke))
	ring, err := j.reopen(ctx, epoch, steps, broke)
	if err != nil {
		return err
	}
	next := j.plan
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

// reopen asks the coordinator for the ring after j.plan's, which broke with
// broke when this rank was steps into epoch, and opens it. A new ring that
// fails to open (a peer that cannot be reached, or a hop that fails one way)
// is reported like a broken one, naming the peer, and the coordinator asked
// again, at once: it waits for this worker only up to its --reform-timeout.
func (j *job) reopen(ctx context.Context, epoch, steps int, broke error) (*allreduce.Ring, error) {
	for {
		next, err := j.askReform(ctx, epoch, steps, broke)
		if err != nil {
			return nil, fmt.Errorf("worker: re-forming the ring after %v: %w", broke, err)
		}
		if old := j.current.ring(); old != nil { // none when the first ring did not open
			old.Close()
		}
		if err := j.accept(next, j.plan.Generation); err != nil {
			return nil, err
		}
		ring, err := j.openRing(ctx)
		if err == nil {
			return ring, nil
		}
		if !(errors.Is(err, allreduce.ErrPeerLost) || errors.Is(err, errSuperseded)) || ctx.Err() != nil {
			return nil, fmt.Errorf("worker: joining re-formed ring %d: %w", next.Generation, err)
		}
		// The ring that did not open trained nothing: it is at its start.
		broke, epoch, steps = fmt.Errorf("opening re-formed ring %d: %w", next.Generation, err), int(next.Epoch), 0
		j.log.Warn("the re-formed ring did not open; asking the coordinator again", zap.Int("rank", int(next.Rank)), zap.Int("generation", int(next.Generation)),
			zap.Int32("lost_rank", lostPeer(broke)), zap.Error(err))
	}
}

// askReform asks the coordinator for the ring after j.plan's, which broke
// with broke when this rank was steps into epoch.
func (j *job) askReform(ctx context.Context, epoch, steps int, broke error) (*controlpb.JobPlan, error) {
	var next *controlpb.JobPlan
	req := &controlpb.ReformRequest{JobId: j.plan.JobId, Name: j.jc.Name, Generation: j.plan.Generation,
		Epoch: int32(epoch), Steps: int32(steps), Reason: broke.Error(), LostRank: lostPeer(broke)}
	err := j.call(ctx, fmt.Sprintf("reform ring %d", j.plan.Generation), "the other survivors of the ring", j.deadlines.reform, false,
		func(ctx context.Context) (err error) {
			next, err = j.control.Reform(ctx, req)
			return err
		})
	return next, err
}

// lostPeer is the rank, in the ring that broke, that this rank could not
// send to or hear from (its successor or predecessor, from the collective or
// from opening the ring), or that the gossip found gone: from it and the
// reporter's rank the coordinator tells which hop failed. It is -1 when broke
// names none of this rank's own: a re-formation the coordinator asked for, or
// a failure another rank relayed (its abort names the rank that one lost,
// while this rank's links held).
func lostPeer(broke error) int32 {
	var pe *allreduce.PeerError
	if !errors.As(broke, &pe) {
		return -1
	}
	if pe.Err != nil && strings.HasPrefix(pe.Err.Error(), "reported by rank ") { // allreduce's relayed abort
		return -1
	}
	return int32(pe.Rank)
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
