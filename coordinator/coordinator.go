// Package coordinator owns a job's life: it scans the dataset, waits until the
// workers have joined, assigns their ranks in a stable order, hands out the
// plan and each epoch's shard, checks after every epoch that the replicas are
// bit-identical, and prints the seed's epoch lines. It holds no model: the
// job's contract is configs', the wire to the workers internal/cluster's
// (controlpb, membership).
//
// Its decisions are one state machine, core (core.go; elastic.go for the
// re-formations, boundary.go for the epoch boundary's watch): Step takes one
// event (a worker's call, the gossip's news of a worker, a timer going off)
// at a time given with the event, and returns actions (answer a call, write
// the curves, print a line, arm a timer, end the job). The Coordinator is
// the adapter around it (coordinator.go): the gRPC handlers turn calls into
// events and wait for their answers, the gossip's events become events, a
// Clock runs the timers, and the files are written on the actions. The core
// does no I/O but through ReadState, and is tested in virtual time
// (core_test.go).
//
// The coordinator command is Command (command.go: the job file under the
// flags, the demo data, --auto-resume), and local.go starts and supervises
// the workers of --local.
package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/atomicfile"
	"github.com/alexring/alexring/internal/cluster/controlpb"
	"github.com/alexring/alexring/internal/cluster/membership"
	"github.com/alexring/alexring/internal/security"
	"github.com/alexring/alexring/sharding"
)

// Config is a coordinator's job.
type Config struct {
	Job     configs.Job // what every rank trains (its settings travel in the plans)
	Workers int         // world size to wait for
	Bind    string      // gossip address (host:port)
	Control string      // control gRPC address (port 0 picks one)
	// WaitTimeout bounds the wait for all workers to join and register.
	WaitTimeout time.Duration
	Local       bool // loopback-tuned failure detection
	// Security is the gossip key and mTLS material (nil: neither).
	Security *security.Material
	// JobID names the job; workers started with another --job are refused.
	// Empty: a random one.
	JobID string
	// Metrics, when set, receives the job-wide Prometheus series.
	Metrics *Metrics
	// MinWorkers is the smallest ring the job goes on with after losing
	// workers (0: 1); below it the job fails.
	MinWorkers int
	// Resume continues the job whose files are in Job.Out: its
	// state.safetensors (the workers load it) and its job id.
	Resume bool
	// ReformTimeout bounds how long a re-formation waits for a worker that is
	// still in the gossip to report its broken ring; after it, the worker is
	// left out (0: a minute).
	ReformTimeout time.Duration
	// LocalMemory, when set, checks that the workers, which run on this
	// machine's CPU (--local without --gpus), fit its memory all together
	// (worker.CheckLocalMemory): New calls it with the dataset's classes and
	// validation images.
	LocalMemory func(job configs.Job, classes, valImages, world int) error
	// Clock runs the coordinator's timers (nil: the system's); tests pass a
	// virtual one.
	Clock Clock
}

// Coordinator runs one job: it serves the control gRPC, follows the gossip
// and writes the job's files, and leaves every decision to its core (one
// event at a time, under mu), doing what the core decides.
type Coordinator struct {
	cfg   Config
	log   *zap.Logger
	out   io.Writer
	clock Clock
	jobID string
	// incarnation tells this coordinator's rings from those of an earlier
	// coordinator of the same job (before a --resume).
	incarnation string
	train       *sharding.Dataset

	mu       sync.Mutex
	core     *core
	calls    map[callID]chan answer // the calls waiting for their answer
	nextCall callID
	changed  chan struct{} // closed and replaced after every event (tests wait on it)
	started  chan struct{} // closed when the first ring forms
	over     chan struct{} // closed when the job ends
	err      error         // why it ended (nil: every epoch trained)
	// done says a --resume found the job finished: its state has trained
	// every epoch.
	done    bool
	control *grpc.Server
}

// Validate reports a bad setting, naming its flag.
func (cfg Config) Validate() error {
	if cfg.Workers < 1 {
		return fmt.Errorf("coordinator: --workers %d, want at least 1", cfg.Workers)
	}
	if err := cfg.Job.Validate(); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if err := cfg.Job.CheckWorld(cfg.Workers); err != nil {
		return fmt.Errorf("coordinator: %w (set --batch to a multiple of --workers)", err)
	}
	return nil
}

// New checks the config and scans the data.
func New(cfg Config, log *zap.Logger, out io.Writer) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	train, val, err := sharding.ScanSplits(cfg.Job.Data)
	if err != nil {
		return nil, configs.BadInput(fmt.Errorf("coordinator: --data: %w", err))
	}
	if err := checkBatch(cfg, train, val); err != nil {
		return nil, err
	}
	nonce := make([]byte, 4)
	rand.Read(nonce)
	c := &Coordinator{
		cfg: cfg, log: log, out: out, clock: cfg.Clock, jobID: cfg.JobID, train: train, incarnation: hex.EncodeToString(nonce),
		core: newCore(coreConfig{}, log, cfg.Metrics), calls: map[callID]chan answer{},
		changed: make(chan struct{}), started: make(chan struct{}), over: make(chan struct{}),
	}
	if c.clock == nil {
		c.clock = systemClock{}
	}
	if cfg.Resume {
		if err := c.resume(); err != nil {
			return nil, configs.BadInput(err) // the files in --out are the input of a resumed job
		}
	}
	if c.jobID == "" {
		id := make([]byte, 6)
		rand.Read(id)
		c.jobID = "job-" + hex.EncodeToString(id)
	}
	c.core.cfg = c.coreConfig()
	return c, nil
}

// planTemplate is what every rank's plan carries: the job's settings and
// the coordinator's own waits, by which a worker bounds its calls.
func (c *Coordinator) planTemplate() *controlpb.JobPlan {
	reform := c.cfg.ReformTimeout
	if reform <= 0 {
		reform = time.Minute
	}
	return &controlpb.JobPlan{JobId: c.jobID, Settings: controlpb.NewJobSettings(c.cfg.Job), ReformTimeout: durationpb.New(reform),
		WaitTimeout: durationpb.New(c.cfg.WaitTimeout), Classes: c.train.Classes, Dataset: c.train.Fingerprint()}
}

// coreConfig is what the core needs of the job.
func (c *Coordinator) coreConfig() coreConfig {
	job := c.cfg.Job
	return coreConfig{
		Workers: c.cfg.Workers, MinWorkers: c.cfg.MinWorkers, ReformTimeout: c.cfg.ReformTimeout, WaitTimeout: c.cfg.WaitTimeout,
		Epochs: job.Epochs, Batch: job.Batch, WorkerBatch: job.WorkerBatchSize, Seed: job.Seed,
		StatePath: filepath.Join(job.Out, configs.StateFile), ReadState: c.readState, JobID: c.jobID, Incarnation: c.incarnation,
		Plan:      c.planTemplate(),
		TrainSize: len(c.train.Samples), Dataset: c.train.Fingerprint(),
	}
}

// readState reads the epoch and best accuracy of the job's state file.
func (c *Coordinator) readState() (configs.Progress, error) {
	return configs.ReadProgress(filepath.Join(c.cfg.Job.Out, configs.StateFile))
}

// checkBatch refuses a global batch larger than the training set, and local
// CPU workers that together need more memory than this machine has: bad
// input, found before any worker starts.
func checkBatch(cfg Config, train, val *sharding.Dataset) error {
	if err := cfg.Job.CheckData(len(train.Samples), cfg.Workers); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if cfg.LocalMemory == nil {
		return nil // each worker checks its own machine
	}
	if err := cfg.LocalMemory(cfg.Job, len(train.Classes), len(val.Samples), cfg.Workers); err != nil {
		return fmt.Errorf("coordinator: --local: %w", err)
	}
	return nil
}

// OutputFiles are the files the coordinator writes into --out.
var OutputFiles = []string{configs.ClassIndicesFile, configs.JobIDFile, configs.MetricsFile, configs.CurvesFile}

// resume picks the job up from its files in --out: the training state the
// workers will load, the job id, the curves so far.
func (c *Coordinator) resume() error {
	path := filepath.Join(c.cfg.Job.Out, configs.StateFile)
	st, err := configs.ReadProgress(path)
	if err != nil {
		return fmt.Errorf("coordinator: --resume: %w", err)
	}
	// A state that has trained every epoch is a job that finished (its
	// coordinator restarted after the end, or killed after the last state):
	// Run reports it done.
	c.done = st.Epoch >= c.cfg.Job.Epochs
	if c.jobID == "" {
		id, err := os.ReadFile(filepath.Join(c.cfg.Job.Out, configs.JobIDFile))
		if err != nil {
			return fmt.Errorf("coordinator: --resume needs the job id: %w (or give --job-id)", err)
		}
		c.jobID = strings.TrimSpace(string(id))
	}
	if c.core.curves, err = readCurves(c.cfg.Job.Out, st.Epoch); err != nil {
		return fmt.Errorf("coordinator: --resume: %w", err)
	}
	// Workers go past an epoch only on the coordinator's verdict, so only the
	// last epoch can lack its row: the coordinator died between the workers'
	// report and the row, and the workers report it again.
	switch missing := st.Epoch - len(c.core.curves); {
	case missing == 1:
		c.core.lostRow = c.core.guessRow(st, c.stateWall(path), c.cfg.Workers)
		c.log.Info("metrics.csv lacks the last trained epoch; the workers report it again, or its row is written with what the state tells",
			zap.Int("epoch", st.Epoch))
	case missing > 1:
		c.log.Warn("metrics.csv lacks epochs the state has trained; their rows are lost", zap.Int("rows", len(c.core.curves)), zap.Int("epochs_done", st.Epoch))
	}
	c.cfg.Job.Resume = path
	c.core.resumedAt = st.Epoch
	c.core.summary.bestAcc = st.BestAcc
	if n := len(c.core.curves); n > 0 {
		c.core.wallSoFar = c.core.curves[n-1].WallSeconds
	}
	for _, r := range c.core.curves {
		if r.ValAccuracy == st.BestAcc && c.core.summary.bestEpoch == 0 {
			c.core.summary.bestEpoch = r.Epoch
		}
	}
	if c.core.lostRow != nil && c.core.lostRow.ValAccuracy == st.BestAcc && c.core.summary.bestEpoch == 0 {
		c.core.summary.bestEpoch = c.core.lostRow.Epoch
	}
	c.log.Info("resuming the job", zap.String("job", c.jobID), zap.String("state", path), zap.Int("epochs_done", st.Epoch), zap.Float64("best_val_accuracy", st.BestAcc))
	return nil
}

// stateWall is the wall time of the job when the state at statePath was
// written: the last row's plus the time from that row's write (metrics.csv's)
// to the state's; NaN when unknown.
func (c *Coordinator) stateWall(statePath string) float64 {
	n := len(c.core.curves)
	if n == 0 || !finite(c.core.curves[n-1].WallSeconds) {
		return math.NaN()
	}
	sst, err1 := os.Stat(statePath)
	mst, err2 := os.Stat(filepath.Join(c.cfg.Job.Out, configs.MetricsFile))
	if err1 != nil || err2 != nil {
		return math.NaN()
	}
	d := sst.ModTime().Sub(mst.ModTime())
	if d < 0 {
		return math.NaN()
	}
	return c.core.curves[n-1].WallSeconds + d.Seconds()
}

// alreadyDone is Run for a resumed job that has trained every epoch: it
// writes the last row if metrics.csv lacks it, and prints the summary,
// starting no ring.
func (c *Coordinator) alreadyDone() error {
	c.mu.Lock()
	c.step(evDone{})
	curves, summary := c.core.curves, c.core.summary
	c.mu.Unlock()
	wall := math.NaN()
	if n := len(curves); n > 0 {
		last := curves[n-1]
		wall = last.WallSeconds
		// The last epoch's line again, as recorded (NaN: lost with a
		// coordinator), for whoever reads this run's output alone.
		fmt.Fprintf(c.out, "Epoch %d/%d - Train loss: %.4f - Val Accuracy: %.4f\n", last.Epoch, c.cfg.Job.Epochs, last.TrainLoss, last.ValAccuracy)
	}
	took := "an unknown time"
	if finite(wall) {
		took = (time.Duration(wall * float64(time.Second))).Round(time.Second).String()
	}
	c.log.Info("the job has already trained all its epochs: nothing to do", zap.String("job", c.jobID), zap.Int("epochs", c.core.resumedAt))
	fmt.Fprintf(c.out, "Job %s is done: %s has trained its %d epochs\n", c.jobID, filepath.Join(c.cfg.Job.Out, configs.StateFile), c.cfg.Job.Epochs)
	fmt.Fprintf(c.out, "Finished Training in %s: best Val Accuracy %.4f at epoch %d; model in %s\n",
		took, summary.bestAcc, summary.bestEpoch, c.cfg.Job.BestModel())
	return nil
}

// Run serves the job until it is done: every rank reported the last epoch.
// ready, when set, is called with the gossip address once workers can join.
func (c *Coordinator) Run(ctx context.Context, ready func(gossip string)) error {
	if err := os.MkdirAll(c.cfg.Job.Out, 0o755); err != nil {
		return configs.BadInput(fmt.Errorf("coordinator: --out: %w", err))
	}
	// What a kill mid-write left; another live job's writes are locked.
	if removed, err := atomicfile.Sweep(c.cfg.Job.Out, OutputFiles...); len(removed) > 0 || err != nil {
		c.log.Info("removed the temporary files of an interrupted write", zap.Strings("files", removed), zap.Error(err))
	}
	if c.done {
		return c.alreadyDone()
	}
	if err := sharding.WriteClassIndices(filepath.Join(c.cfg.Job.Out, configs.ClassIndicesFile), c.train.Classes); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(c.cfg.Job.Out, configs.JobIDFile), 0o644, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, c.jobID)
		return err
	}); err != nil {
		return fmt.Errorf("coordinator: --out: %w", err)
	}
	lis, err := c.serveControl()
	if err != nil {
		return err
	}
	defer stopGracefully(c.control, 5*time.Second)

	var key []byte
	if c.cfg.Security != nil {
		key = c.cfg.Security.GossipKey
	}
	member, err := membership.Start(ctx, membership.Config{
		Name: "coordinator", Bind: c.cfg.Bind, Local: c.cfg.Local, SecretKey: key,
		Meta: membership.Meta{Role: membership.RoleCoordinator, GRPC: lis.Addr().String(), Job: c.jobID},
	}, c.log)
	if err != nil {
		return err
	}
	defer member.Leave(time.Second)
	c.log.Info("waiting for workers", zap.Int("workers", c.cfg.Workers), zap.String("gossip", member.Addr()),
		zap.String("control", lis.Addr().String()), zap.String("job", c.jobID), zap.String("data", c.cfg.Job.Data))
	if ready != nil {
		ready(member.Addr())
	}
	if c.cfg.Resume {
		c.cfg.Metrics.resumed()
	}
	if err := c.waitForWorkers(ctx, member); err != nil {
		return err
	}
	return c.follow(ctx, member)
}

// serveControl starts the control gRPC service.
func (c *Coordinator) serveControl() (net.Listener, error) {
	lis, err := net.Listen("tcp", c.cfg.Control)
	if err != nil {
		return nil, fmt.Errorf("coordinator: control address %s: %w", c.cfg.Control, err)
	}
	var opts []grpc.ServerOption
	if creds := c.cfg.Security.ServerCreds(); creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	c.control = grpc.NewServer(opts...)
	controlpb.RegisterControlServer(c.control, &controlService{c: c})
	go c.control.Serve(lis)
	return lis, nil
}

// follow serves the job from its first ring to its end, handing the core
// the gossip's news, and prints the summary.
func (c *Coordinator) follow(ctx context.Context, member *membership.Member) error {
	c.mu.Lock()
	batch := c.core.ring.batch
	c.mu.Unlock()
	fmt.Fprintf(c.out, "Job %s: %d workers, %d training images, %d classes; global batch %d (%d per worker)\n",
		c.jobID, c.cfg.Workers, len(c.train.Samples), len(c.train.Classes), batch*c.cfg.Workers, batch)
	start := c.clock.Now()
	for over := false; !over; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.over:
			over = true
		case e := <-member.Events():
			c.onMember(e, member)
		}
	}
	c.mu.Lock()
	err, summary := c.err, c.core.summary
	c.mu.Unlock()
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "Finished Training in %s: best Val Accuracy %.4f at epoch %d; model in %s\n",
		c.clock.Now().Sub(start).Round(time.Second), summary.bestAcc, summary.bestEpoch, c.cfg.Job.BestModel())
	return nil
}

// waitForWorkers returns once Workers workers have registered (the last of
// them forms the first ring), or fails at WaitTimeout listing who is there.
func (c *Coordinator) waitForWorkers(ctx context.Context, member *membership.Member) error {
	timeout := make(chan struct{})
	c.clock.AfterFunc(c.cfg.WaitTimeout, func() { close(timeout) })
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.started:
			return nil
		case e := <-member.Events():
			// The core takes it (it ignores members before the start): the
			// first ring may have formed since the select began.
			c.onMember(e, member)
		case <-timeout:
			var there []string
			for _, m := range member.Members() {
				there = append(there, fmt.Sprintf("%s (%s, %s)", m.Name, m.Meta.Role, m.Addr))
			}
			c.mu.Lock()
			var registered []string
			for name := range c.core.workers {
				registered = append(registered, name)
			}
			c.mu.Unlock()
			sort.Strings(registered)
			if len(there) == 0 {
				there = []string{"nobody"}
			}
			return fmt.Errorf("coordinator: waited %v for %d workers; %d registered [%s]; members: %s",
				c.cfg.WaitTimeout, c.cfg.Workers, len(registered), strings.Join(registered, ", "), strings.Join(there, ", "))
		}
	}
}

// step hands the core one event and does what it decided. Called with c.mu
// held.
func (c *Coordinator) step(ev event) {
	now := c.clock.Now()
	for _, a := range c.core.Step(ev, now) {
		switch a := a.(type) {
		case answer:
			if ch := c.calls[a.call]; ch != nil {
				delete(c.calls, a.call)
				ch <- a
			}
		case writeRows:
			if err := writeCurves(c.cfg.Job.Out, a.rows); err != nil {
				c.log.Warn("could not write the training curves", zap.Error(err))
			}
		case printLine:
			fmt.Fprint(c.out, a.text)
		case armTimer:
			// From now, after what came before it (a slow write of the
			// curves delays the verdict, and so the next epoch's start).
			c.clock.AfterFunc(a.at.Sub(now), func() {
				c.mu.Lock()
				defer c.mu.Unlock()
				select {
				case <-c.over: // nothing is decided after the job's end (nor written into --out)
				default:
					c.step(evTimer{t: a.t})
				}
			})
		case ringFormed:
			if a.first {
				close(c.started)
			}
		case endJob:
			select {
			case <-c.over: // it ended already
			default:
				c.err = a.err
				close(c.over)
			}
		}
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// ask steps the event of a call and waits for its answer, which may come
// with a later event; if ctx ends first, the call is given up (the core
// answers it then, unless its answer is already on the way).
func (c *Coordinator) ask(ctx context.Context, ev func(callID) event) (proto.Message, error) {
	c.mu.Lock()
	c.nextCall++
	id := c.nextCall
	ch := make(chan answer, 1)
	c.calls[id] = ch
	c.step(ev(id))
	c.mu.Unlock()
	select {
	case a := <-ch:
		return a.msg, grpcError(a.err)
	case <-ctx.Done():
	}
	c.mu.Lock()
	c.step(evCancel{call: id, err: ctx.Err()})
	c.mu.Unlock()
	a := <-ch
	return a.msg, grpcError(a.err)
}

// grpcError is err as the call's status: the core's refusals carry their
// code; a call's own context error stays as it is.
func grpcError(err error) error {
	var ce *callError
	if errors.As(err, &ce) {
		return status.Error(ce.code, ce.msg)
	}
	return err
}

// countMembers updates the members-alive series.
func (c *Coordinator) countMembers(member *membership.Member) {
	alive := 0
	for _, m := range member.Members() {
		if m.Meta.Role == membership.RoleWorker {
			alive++
		}
	}
	c.cfg.Metrics.members(alive)
}

// onMember hands the core the gossip's news of a worker.
func (c *Coordinator) onMember(e membership.Event, member *membership.Member) {
	c.log.Info("member "+e.Kind.String(), zap.String("name", e.Name), zap.String("role", e.Meta.Role), zap.String("addr", e.Addr))
	if member != nil {
		c.countMembers(member)
	}
	if e.Meta.Role != membership.RoleWorker {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.step(evMember{left: e.Kind == membership.Left, name: e.Name, grpc: e.Meta.GRPC})
}

// stopGracefully lets the last replies (the final epoch's verdicts) reach the
// workers, then stops the server for good.
func stopGracefully(s *grpc.Server, wait time.Duration) {
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(wait):
		s.Stop()
	}
}

type controlService struct {
	controlpb.UnimplementedControlServer
	c *Coordinator
}

func (s *controlService) Register(ctx context.Context, req *controlpb.RegisterRequest) (*controlpb.JobPlan, error) {
	msg, err := s.c.ask(ctx, func(id callID) event { return evRegister{call: id, req: req} })
	plan, _ := msg.(*controlpb.JobPlan)
	return plan, err
}

func (s *controlService) Reform(ctx context.Context, req *controlpb.ReformRequest) (*controlpb.JobPlan, error) {
	msg, err := s.c.ask(ctx, func(id callID) event { return evReform{call: id, req: req} })
	plan, _ := msg.(*controlpb.JobPlan)
	return plan, err
}

func (s *controlService) EpochShard(ctx context.Context, req *controlpb.EpochRequest) (*controlpb.Shard, error) {
	msg, err := s.c.ask(ctx, func(id callID) event { return evShard{call: id, req: req} })
	shard, _ := msg.(*controlpb.Shard)
	return shard, err
}

func (s *controlService) Report(ctx context.Context, req *controlpb.EpochReport) (*controlpb.ReportReply, error) {
	deadline, _ := ctx.Deadline()
	msg, err := s.c.ask(ctx, func(id callID) event { return evReport{call: id, req: req, deadline: deadline} })
	reply, _ := msg.(*controlpb.ReportReply)
	return reply, err
}
