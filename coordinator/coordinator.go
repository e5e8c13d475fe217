// Package coordinator owns a job's life: it scans the dataset, waits until the
// workers have joined, assigns their ranks in a stable order, hands out the
// plan and each epoch's shard, checks after every epoch that the replicas are
// bit-identical, and prints the seed's epoch lines. It holds no model.
package coordinator

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/coordinator/controlpb"
	"github.com/alexring/alexring/coordinator/membership"
	"github.com/alexring/alexring/internal/atomicfile"
	"github.com/alexring/alexring/internal/security"
	"github.com/alexring/alexring/sharding"
	"github.com/alexring/alexring/worker"
)

// Config is a coordinator's job.
type Config struct {
	Job     worker.Config // what every rank trains (sent to them as JSON)
	Workers int           // world size to wait for
	Bind    string        // gossip address (host:port)
	Control string        // control gRPC address (port 0 picks one)
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
	// LocalCPU says the workers run on this machine's CPU (--local without
	// --gpus): New checks that their memory fits it, all of them together.
	LocalCPU bool
}

// LoadJobConfig reads a YAML job file (a path, or a built-in config's name)
// over the defaults; unknown keys are errors that name the file. Its errors
// are bad input (worker.ErrBadInput).
func LoadJobConfig(name string) (worker.Config, error) {
	data, source, err := configs.Read(name)
	if err != nil {
		return worker.DefaultConfig(), worker.BadInput(fmt.Errorf("coordinator: --config: %w", err))
	}
	return ParseJobConfig(data, source)
}

// ParseJobConfig decodes a job file's bytes over the defaults; source names
// it in errors.
func ParseJobConfig(data []byte, source string) (worker.Config, error) {
	cfg := worker.DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, worker.BadInput(fmt.Errorf("coordinator: --config %s: %w", source, err))
	}
	return cfg, nil
}

// Coordinator runs one job.
type Coordinator struct {
	cfg   Config
	log   *zap.Logger
	out   io.Writer
	jobID string
	// incarnation tells this coordinator's rings from those of an earlier
	// coordinator of the same job (before a --resume).
	incarnation string
	train       *sharding.Dataset

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every state change
	workers  map[string]*controlpb.RegisterRequest
	alive    map[string]bool // workers in the gossip
	started  bool
	ring     ringState                        // the current ring, once started
	plans    map[string]*controlpb.JobPlan    // the current ring's, by worker name
	reform   *reformation                     // the re-formation under way, if any
	joiners  map[string]bool                  // registered after the start, waiting for the next epoch boundary
	prior    map[int][]sharding.Segment       // epoch -> rings that trained part of it
	reports  map[int][]*controlpb.EpochReport // epoch -> by rank
	verdicts map[int]*controlpb.ReportReply
	failed   error
	finished bool
	// failedLinks are the links between workers that broke a ring, for the
	// job's life: no later ring uses them (a link is only shown to work by
	// using it, and trying a broken one costs a ring's deadline). A worker
	// that registers again is a new process and starts with a clean record.
	failedLinks map[link]bool
	// leftOut says why a survivor is not in the current ring.
	leftOut map[string]string

	// The epoch the current ring trains, for telling an epoch boundary that
	// waits on workers that have not reported.
	epochBegan time.Time     // when the ring formed or the last epoch was judged
	epochWhole bool          // and the ring trains the whole epoch (none of it before a re-formation)
	lastEpoch  time.Duration // from that to the first report, the last epoch
	lastSpread time.Duration // the longest wait from an epoch's first report to its last seen
	wait       *epochWait    // the boundary being waited for, if any

	summary struct {
		bestAcc   float64
		bestEpoch int
	}
	startedAt time.Time
	wallSoFar float64 // seconds the job ran before a --resume
	resumedAt int     // epochs trained before a --resume
	// lostRow is the row of the epoch a --resume's state has trained and
	// metrics.csv lacks (its coordinator died between the state and the
	// row), from what the state and the files tell: written as it is once
	// the job trains past that epoch without the workers reporting it again
	// (a --local job's die with their coordinator). nil: no row is lacking.
	lostRow *epochRow
	// done says a --resume found the job finished: its state has trained
	// every epoch.
	done    bool
	curves  []epochRow
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
		return nil, worker.BadInput(fmt.Errorf("coordinator: --data: %w", err))
	}
	if err := checkBatch(cfg, train, val); err != nil {
		return nil, err
	}
	nonce := make([]byte, 4)
	rand.Read(nonce)
	c := &Coordinator{
		cfg: cfg, log: log, out: out, jobID: cfg.JobID, train: train, incarnation: hex.EncodeToString(nonce),
		changed: make(chan struct{}), workers: map[string]*controlpb.RegisterRequest{}, alive: map[string]bool{}, joiners: map[string]bool{},
		reports: map[int][]*controlpb.EpochReport{}, verdicts: map[int]*controlpb.ReportReply{}, prior: map[int][]sharding.Segment{},
		failedLinks: map[link]bool{}, leftOut: map[string]string{},
	}
	if cfg.Resume {
		if err := c.resume(); err != nil {
			return nil, worker.BadInput(err) // the files in --out are the input of a resumed job
		}
	}
	if c.jobID == "" {
		id := make([]byte, 6)
		rand.Read(id)
		c.jobID = "job-" + hex.EncodeToString(id)
	}
	return c, nil
}

// checkBatch refuses a global batch larger than the training set, and local
// CPU workers that together need more memory than this machine has: bad
// input, found before any worker starts.
func checkBatch(cfg Config, train, val *sharding.Dataset) error {
	if err := cfg.Job.CheckData(len(train.Samples), cfg.Workers); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if !cfg.LocalCPU {
		return nil // each worker checks its own machine
	}
	spec, err := alexnet.NewSpec(cfg.Job.Variant, len(train.Classes))
	if err != nil {
		return worker.BadInput(fmt.Errorf("coordinator: --variant: %w", err))
	}
	job := cfg.Job
	job.EvalBatch = min(job.EvalBatch, len(val.Samples)) // as the workers clamp it
	if err := job.CheckMemory(spec, job.WorkerBatch(cfg.Workers), true, cfg.Workers); err != nil {
		return fmt.Errorf("coordinator: --local: %w", err)
	}
	return nil
}

// JobIDFile holds the job's id in --out, for --resume.
const JobIDFile = "job_id"

// OutputFiles are the files the coordinator writes into --out.
var OutputFiles = []string{worker.ClassIndicesFile, JobIDFile, MetricsFile, CurvesFile}

// resume picks the job up from its files in --out: the training state the
// workers will load, the job id, the curves so far.
func (c *Coordinator) resume() error {
	path := filepath.Join(c.cfg.Job.Out, worker.StateFile)
	st, err := alexnet.LoadTrainState(path)
	if err != nil {
		return fmt.Errorf("coordinator: --resume: %w", err)
	}
	// A state that has trained every epoch is a job that finished (its
	// coordinator restarted after the end, or killed after the last state):
	// Run reports it done.
	c.done = st.Epoch >= c.cfg.Job.Epochs
	if c.jobID == "" {
		id, err := os.ReadFile(filepath.Join(c.cfg.Job.Out, JobIDFile))
		if err != nil {
			return fmt.Errorf("coordinator: --resume needs the job id: %w (or give --job-id)", err)
		}
		c.jobID = strings.TrimSpace(string(id))
	}
	if c.curves, err = readCurves(c.cfg.Job.Out, st.Epoch); err != nil {
		return fmt.Errorf("coordinator: --resume: %w", err)
	}
	// Workers go past an epoch only on the coordinator's verdict, so only the
	// last epoch can lack its row: the coordinator died between the workers'
	// report and the row, and the workers report it again.
	switch missing := st.Epoch - len(c.curves); {
	case missing == 1:
		c.lostRow = c.guessRow(st, path)
		c.log.Info("metrics.csv lacks the last trained epoch; the workers report it again, or its row is written with what the state tells",
			zap.Int("epoch", st.Epoch))
	case missing > 1:
		c.log.Warn("metrics.csv lacks epochs the state has trained; their rows are lost", zap.Int("rows", len(c.curves)), zap.Int("epochs_done", st.Epoch))
	}
	c.cfg.Job.Resume = path
	c.resumedAt = st.Epoch
	c.summary.bestAcc = st.BestAcc
	if n := len(c.curves); n > 0 {
		c.wallSoFar = c.curves[n-1].WallSeconds
	}
	for _, r := range c.curves {
		if r.ValAccuracy == st.BestAcc && c.summary.bestEpoch == 0 {
			c.summary.bestEpoch = r.Epoch
		}
	}
	if c.lostRow != nil && c.lostRow.ValAccuracy == st.BestAcc && c.summary.bestEpoch == 0 {
		c.summary.bestEpoch = c.lostRow.Epoch
	}
	c.log.Info("resuming the job", zap.String("job", c.jobID), zap.String("state", path), zap.Int("epochs_done", st.Epoch), zap.Float64("best_val_accuracy", st.BestAcc))
	return nil
}

// guessRow is the row of epoch st.Epoch, which metrics.csv (c.curves) lacks,
// from what is known without the workers' reports; NaN for what is not. Its
// validation accuracy is the state's best when that beats every earlier
// epoch's (it was this epoch's); its wall time, the last row's plus the time
// from that row's write (metrics.csv's) to the state's; its world, the last
// row's. Train loss and images per second are unknown.
func (c *Coordinator) guessRow(st *alexnet.TrainState, statePath string) *epochRow {
	nan := math.NaN()
	row := &epochRow{Epoch: st.Epoch, TrainLoss: nan, ValAccuracy: nan, ImagesPerS: nan, WallSeconds: nan, World: c.cfg.Workers}
	best := math.Inf(-1)
	for _, r := range c.curves {
		best = max(best, r.ValAccuracy)
	}
	if len(c.curves) == 0 || st.BestAcc > best {
		row.ValAccuracy = st.BestAcc
	}
	if n := len(c.curves); n > 0 {
		last := c.curves[n-1]
		row.World = last.World
		sst, err1 := os.Stat(statePath)
		mst, err2 := os.Stat(filepath.Join(c.cfg.Job.Out, MetricsFile))
		if err1 == nil && err2 == nil && finite(last.WallSeconds) {
			if d := sst.ModTime().Sub(mst.ModTime()); d >= 0 {
				row.WallSeconds = last.WallSeconds + d.Seconds()
			}
		}
	}
	return row
}

// recordLost writes the row of the epoch lost with the last coordinator
// (lostRow), once the job trains past that epoch: the workers that would
// report it again have had their turn. Called with c.mu held.
func (c *Coordinator) recordLost() {
	row := c.lostRow
	if row == nil {
		return
	}
	c.lostRow = nil
	if c.recorded() >= row.Epoch {
		return // the workers reported it again
	}
	c.curves = append(c.curves, *row)
	if finite(row.WallSeconds) {
		c.wallSoFar = row.WallSeconds
	}
	if err := writeCurves(c.cfg.Job.Out, c.curves); err != nil {
		c.log.Warn("could not write the training curves", zap.Error(err))
	}
	c.log.Warn("no worker reported the epoch lost with the last coordinator; its row holds what the state tells (NaN: unknown)",
		zap.Int("epoch", row.Epoch), zap.Float64("val_accuracy", row.ValAccuracy), zap.Float64("wall_s", row.WallSeconds))
}

// alreadyDone is Run for a resumed job that has trained every epoch: it
// writes the last row if metrics.csv lacks it, and prints the summary,
// starting no ring.
func (c *Coordinator) alreadyDone() error {
	c.mu.Lock()
	c.recordLost()
	c.mu.Unlock()
	wall := math.NaN()
	if n := len(c.curves); n > 0 {
		last := c.curves[n-1]
		wall = last.WallSeconds
		// The last epoch's line again, as recorded (NaN: lost with a
		// coordinator), for whoever reads this run's output alone.
		fmt.Fprintf(c.out, "Epoch %d/%d - Train loss: %.4f - Val Accuracy: %.4f\n", last.Epoch, c.cfg.Job.Epochs, last.TrainLoss, last.ValAccuracy)
	}
	took := "an unknown time"
	if finite(wall) {
		took = (time.Duration(wall * float64(time.Second))).Round(time.Second).String()
	}
	c.log.Info("the job has already trained all its epochs: nothing to do", zap.String("job", c.jobID), zap.Int("epochs", c.resumedAt))
	fmt.Fprintf(c.out, "Job %s is done: %s has trained its %d epochs\n", c.jobID, filepath.Join(c.cfg.Job.Out, worker.StateFile), c.cfg.Job.Epochs)
	fmt.Fprintf(c.out, "Finished Training in %s: best Val Accuracy %.4f at epoch %d; model in %s\n",
		took, c.summary.bestAcc, c.summary.bestEpoch, c.cfg.Job.BestModel())
	return nil
}

// Run serves the job until it is done: every rank reported the last epoch.
// ready, when set, is called with the gossip address once workers can join.
func (c *Coordinator) Run(ctx context.Context, ready func(gossip string)) error {
	if err := os.MkdirAll(c.cfg.Job.Out, 0o755); err != nil {
		return worker.BadInput(fmt.Errorf("coordinator: --out: %w", err))
	}
	// What a kill mid-write left; another live job's writes are locked.
	if removed, err := atomicfile.Sweep(c.cfg.Job.Out, OutputFiles...); len(removed) > 0 || err != nil {
		c.log.Info("removed the temporary files of an interrupted write", zap.Strings("files", removed), zap.Error(err))
	}
	if c.done {
		return c.alreadyDone()
	}
	if err := sharding.WriteClassIndices(filepath.Join(c.cfg.Job.Out, worker.ClassIndicesFile), c.train.Classes); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(c.cfg.Job.Out, JobIDFile), 0o644, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, c.jobID)
		return err
	}); err != nil {
		return fmt.Errorf("coordinator: --out: %w", err)
	}
	lis, err := net.Listen("tcp", c.cfg.Control)
	if err != nil {
		return fmt.Errorf("coordinator: control address %s: %w", c.cfg.Control, err)
	}
	var opts []grpc.ServerOption
	if creds := c.cfg.Security.ServerCreds(); creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	c.control = grpc.NewServer(opts...)
	controlpb.RegisterControlServer(c.control, &controlService{c: c})
	go c.control.Serve(lis)
	defer stopGracefully(c.control, 5*time.Second)

	var key []byte
	if c.cfg.Security != nil {
		key = c.cfg.Security.GossipKey
	}
	member, err := membership.Start(membership.Config{
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
	fmt.Fprintf(c.out, "Job %s: %d workers, %d training images, %d classes; global batch %d (%d per worker)\n",
		c.jobID, c.cfg.Workers, len(c.train.Samples), len(c.train.Classes), c.ring.batch*c.cfg.Workers, c.ring.batch)
	start := time.Now()
	for {
		c.mu.Lock()
		done, failed, changed := c.finished, c.failed, c.changed
		c.mu.Unlock()
		if failed != nil {
			return failed
		}
		if done {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case e := <-member.Events():
			c.onMember(e, member)
		}
	}
	fmt.Fprintf(c.out, "Finished Training in %s: best Val Accuracy %.4f at epoch %d; model in %s\n",
		time.Since(start).Round(time.Second), c.summary.bestAcc, c.summary.bestEpoch, c.cfg.Job.BestModel())
	return nil
}

// waitForWorkers returns once Workers workers have registered, then assigns
// ranks by sorted name, or fails at WaitTimeout listing who is there.
func (c *Coordinator) waitForWorkers(ctx context.Context, member *membership.Member) error {
	timeout := time.NewTimer(c.cfg.WaitTimeout)
	defer timeout.Stop()
	for {
		c.mu.Lock()
		n, changed := len(c.workers), c.changed
		c.mu.Unlock()
		if n >= c.cfg.Workers {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case e := <-member.Events():
			c.log.Info("member "+e.Kind.String(), zap.String("name", e.Name), zap.String("role", e.Meta.Role), zap.String("addr", e.Addr))
			c.countMembers(member)
		case <-timeout.C:
			var there []string
			for _, m := range member.Members() {
				there = append(there, fmt.Sprintf("%s (%s, %s)", m.Name, m.Meta.Role, m.Addr))
			}
			c.mu.Lock()
			var registered []string
			for name := range c.workers {
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
	c.start()
	return nil
}

// start assigns ranks in sorted-name order and makes every worker's plan.
func (c *Coordinator) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, 0, len(c.workers))
	for name := range c.workers {
		names = append(names, name)
		c.alive[name] = true
	}
	sort.Strings(names)
	c.formRing(names, c.resumedAt, "")
	c.started = true
	c.startedAt = time.Now()
	c.notify()
}

// ringState is the current ring: its generation (1, then +1 per
// re-formation), members and their ring addresses by rank, and per-rank
// batch.
type ringState struct {
	gen     int
	members []string
	peers   []string
	ranks   map[string]int
	batch   int
}

func (r ringState) world() int { return len(r.members) }

// formRing makes the next ring of names, by rank (sorted names, unless
// failed links asked for another order), starting in epoch with every rank
// taking root's state (rank 0's when root is empty), and each member's plan.
// Called with c.mu held.
func (c *Coordinator) formRing(names []string, epoch int, root string) {
	world := len(names)
	batch := c.cfg.Job.WorkerBatch(world)
	if c.cfg.Job.WorkerBatchSize == 0 && c.cfg.Job.Batch%world != 0 {
		// The global batch stays (nearly) what it was: each rank takes the
		// nearest whole share.
		batch = max(1, int(math.Round(float64(c.cfg.Job.Batch)/float64(world))))
	}
	peers := make([]string, world)
	c.ring = ringState{gen: c.ring.gen + 1, members: names, peers: peers, ranks: map[string]int{}, batch: batch}
	for r, name := range names {
		c.ring.ranks[name] = r
		peers[r] = c.workers[name].RingAddr
	}
	rootRank := c.ring.ranks[root] // 0 when root is empty
	cfgJSON := c.planConfig()
	c.plans = map[string]*controlpb.JobPlan{}
	for r, name := range names {
		c.plans[name] = &controlpb.JobPlan{
			JobId: c.jobID, Rank: int32(r), World: int32(world), Peers: peers, RingId: fmt.Sprintf("%s-%s-ring-%d", c.jobID, c.incarnation, c.ring.gen),
			ConfigJson: cfgJSON, Classes: c.train.Classes, Dataset: c.train.Fingerprint(),
			Generation: int32(c.ring.gen), BatchPerRank: int32(batch), Epoch: int32(epoch), StateRoot: int32(rootRank),
			LocalPeers: c.localPeers(names, name),
		}
		c.log.Info("rank assigned", zap.String("worker", name), zap.Int("rank", r), zap.Int("generation", c.ring.gen),
			zap.String("ring_addr", peers[r]), zap.String("device", c.workers[name].Device))
	}
	c.cfg.Metrics.ringFormed(world)
	consumed := 0
	for _, seg := range c.prior[epoch] {
		consumed += seg.Consumed
	}
	c.epochStarted(epoch+1, consumed == 0)
}

// localPeers are, by rank, the Unix sockets of the ranks of names on self's
// host ("" for the others; nil when there are none): self's ring dials them
// instead of their ring addresses (allreduce's local.go). The ring address
// stays a worker's identity here. Called with c.mu held.
func (c *Coordinator) localPeers(names []string, self string) []string {
	host := c.workers[self].Host
	if host == "" {
		return nil
	}
	var local []string
	for r, name := range names {
		if w := c.workers[name]; name != self && w.Host == host && w.LocalAddr != "" {
			if local == nil {
				local = make([]string, len(names))
			}
			local[r] = w.LocalAddr
		}
	}
	return local
}

// planConfig is the job config the plans carry, with the coordinator's own
// waits beside it (key "coordinator"), by which a worker bounds its calls.
func (c *Coordinator) planConfig() []byte {
	job, _ := json.Marshal(c.cfg.Job)
	var fields map[string]json.RawMessage
	if json.Unmarshal(job, &fields) != nil {
		return job
	}
	reform := c.cfg.ReformTimeout
	if reform <= 0 {
		reform = time.Minute
	}
	fields["coordinator"], _ = json.Marshal(map[string]time.Duration{"reform_timeout": reform, "wait_timeout": c.cfg.WaitTimeout})
	out, err := json.Marshal(fields)
	if err != nil {
		return job
	}
	return out
}

func (c *Coordinator) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
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

// onMember reacts to membership: a member of the ring leaving (or failing)
// starts a re-formation without it.
func (c *Coordinator) onMember(e membership.Event, member *membership.Member) {
	c.log.Info("member "+e.Kind.String(), zap.String("name", e.Name), zap.String("role", e.Meta.Role))
	if member != nil {
		c.countMembers(member)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.Meta.Role != membership.RoleWorker {
		return
	}
	if w := c.workers[e.Name]; w != nil && e.Kind == membership.Left && e.Meta.GRPC != "" && e.Meta.GRPC != w.RingAddr {
		// The gossip declares dead the process that had this name before
		// (a pod restarted under it): the one registered now is another.
		c.log.Info("an earlier process of a worker left; the one registered under its name stays", zap.String("name", e.Name),
			zap.String("left", e.Meta.GRPC), zap.String("registered", w.RingAddr))
		return
	}
	c.alive[e.Name] = e.Kind != membership.Left
	if c.joiners[e.Name] && e.Kind == membership.Left {
		delete(c.joiners, e.Name)
	}
	if _, ok := c.ring.ranks[e.Name]; ok && e.Kind == membership.Left {
		c.cfg.Metrics.workerLost()
		c.beginReform(fmt.Sprintf("worker %s (rank %d) left the cluster", e.Name, c.ring.ranks[e.Name]))
		c.completeReform() // it may have been the last one a re-formation waited for
		c.notify()
	}
}

// report records a rank's epoch and, once all ranks are in, decides.
func (c *Coordinator) report(ctx context.Context, rep *controlpb.EpochReport) (*controlpb.ReportReply, error) {
	c.mu.Lock()
	if !c.started || rep.JobId != c.jobID || int(rep.Rank) >= c.ring.world() || rep.Rank < 0 {
		c.mu.Unlock()
		return nil, status.Errorf(codes.InvalidArgument, "report for job %q rank %d does not belong to job %s", rep.JobId, rep.Rank, c.jobID)
	}
	if int(rep.Generation) != c.ring.gen || c.reform != nil {
		c.mu.Unlock()
		return &controlpb.ReportReply{Reform: true}, nil
	}
	e := int(rep.Epoch)
	if c.lostRow != nil && e > c.lostRow.Epoch {
		c.recordLost()
	}
	if c.verdicts[e] == nil && e <= c.recorded() {
		// A report that found its coordinator gone, sent again to this
		// resumed one, of an epoch the earlier coordinator had recorded.
		c.mu.Unlock()
		return &controlpb.ReportReply{}, nil
	}
	if c.reports[e] == nil {
		c.reports[e] = make([]*controlpb.EpochReport, c.ring.world())
	}
	c.reports[e][rep.Rank] = rep
	complete := true
	for _, r := range c.reports[e] {
		complete = complete && r != nil
	}
	c.reported(ctx, e)
	if complete {
		c.verdicts[e] = c.decide(e)
		c.notify()
	}
	defer c.mu.Unlock()
	gen := c.ring.gen
	if err := c.waitLocked(ctx, func() bool { return c.verdicts[e] != nil || c.failed != nil || c.ring.gen != gen || c.reform != nil }); err != nil {
		return nil, err
	}
	if v := c.verdicts[e]; v != nil {
		return v, nil
	}
	if c.failed != nil {
		return &controlpb.ReportReply{Stop: true, Reason: c.failed.Error()}, nil
	}
	return &controlpb.ReportReply{Reform: true}, nil
}

// epochWait is an epoch boundary that waits on workers that have not
// reported: since the first report came, or since the epoch was overdue with
// none.
type epochWait struct {
	gen, epoch int
	since      time.Time
	first      time.Time // the first report (zero: none yet)
	logged     bool
	// giveUp is the earliest deadline of the reports waiting for the
	// verdict: past it, their ranks stop waiting for this coordinator.
	giveUp time.Time
}

// Thresholds of the boundary log (variables for tests): a boundary normally
// waits for rank 0's validation; one that waits past patience (or twice the
// longest boundary seen) is logged, and so is an epoch that runs past twice
// the last one's length (at least overdueSlack more) without a single report.
var (
	patience     = 5 * time.Second
	overdueSlack = 5 * time.Second
)

// epochStarted notes that the current ring begins (1-based) epoch, whole or
// the rest of it, and arms the check that tells it overdue. Called with c.mu
// held.
func (c *Coordinator) epochStarted(epoch int, whole bool) {
	c.endWait()
	c.epochBegan, c.epochWhole = time.Now(), whole
	if c.lastEpoch > 0 {
		gen := c.ring.gen
		time.AfterFunc(c.lastEpoch+max(c.lastEpoch, overdueSlack), func() { c.checkWait(gen, epoch) })
	}
}

// reported notes a report of epoch (by a rank of the current ring) whose
// call waits under ctx. Called with c.mu held.
func (c *Coordinator) reported(ctx context.Context, epoch int) {
	w := c.wait
	if w == nil || w.gen != c.ring.gen || w.epoch != epoch {
		w = &epochWait{gen: c.ring.gen, epoch: epoch, since: time.Now()}
		c.wait = w
	}
	if w.first.IsZero() {
		w.first = time.Now()
		if c.epochWhole && !w.logged { // an overdue epoch is no measure of the next
			c.lastEpoch = w.first.Sub(c.epochBegan)
		}
		gen := c.ring.gen
		time.AfterFunc(max(patience, 2*c.lastSpread), func() { c.checkWait(gen, epoch) })
	}
	if d, ok := ctx.Deadline(); ok && (w.giveUp.IsZero() || d.Before(w.giveUp)) {
		w.giveUp = d
	}
	c.cfg.Metrics.waitingFor(c.missing(epoch), w.since)
}

// missing are the ranks of the current ring that have not reported epoch.
// Called with c.mu held.
func (c *Coordinator) missing(epoch int) []int {
	var ranks []int
	for r := range c.ring.world() {
		if rs := c.reports[epoch]; rs == nil || rs[r] == nil {
			ranks = append(ranks, r)
		}
	}
	return ranks
}

// checkWait logs, once, an epoch boundary of ring gen still waiting: who has
// not reported, whether the gossip still holds them, how long it waited and
// how long its reporters wait at most.
func (c *Coordinator) checkWait(gen, epoch int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ring.gen != gen || c.reform != nil || c.finished || c.failed != nil || c.verdicts[epoch] != nil {
		return
	}
	w := c.wait
	if w == nil || w.gen != gen || w.epoch != epoch {
		// Overdue with no report at all: the wait starts now.
		w = &epochWait{gen: gen, epoch: epoch, since: time.Now()}
		c.wait = w
	}
	if w.logged {
		return
	}
	w.logged = true
	var waiting, gone []string
	for _, r := range c.missing(epoch) {
		name := c.ring.members[r]
		waiting = append(waiting, fmt.Sprintf("%s (rank %d)", name, r))
		if !c.alive[name] {
			gone = append(gone, name)
		}
	}
	fields := []zap.Field{zap.Int("epoch", epoch), zap.Int("generation", gen), zap.Strings("waiting_for", waiting),
		zap.Int("reported", c.ring.world()-len(waiting)), zap.Int("world", c.ring.world()), zap.Strings("gone_from_gossip", gone),
		zap.Duration("epoch_running", time.Since(c.epochBegan)), zap.Duration("last_epoch_took", c.lastEpoch)}
	if !w.first.IsZero() {
		fields = append(fields, zap.Duration("since_first_report", time.Since(w.first)))
	}
	if w.giveUp.IsZero() {
		// Nothing bounds it here: the ring re-forms once the gossip finds
		// them gone, or the ranks that reported give up on their own.
		fields = append(fields, zap.String("at_most", "until they report or the gossip finds them gone"))
	} else {
		fields = append(fields, zap.Duration("at_most", time.Until(w.giveUp)), zap.String("then", "the ranks that reported stop waiting for this coordinator"))
	}
	c.log.Warn("epoch boundary waiting for workers that have not reported", fields...)
	c.cfg.Metrics.waitingFor(c.missing(epoch), w.since)
}

// endWait closes the boundary wait, if any: its length goes to the metrics
// (and to the log when the wait was logged). Called with c.mu held.
func (c *Coordinator) endWait() {
	w := c.wait
	c.wait = nil
	c.cfg.Metrics.waitingFor(nil, time.Time{})
	if w == nil {
		return
	}
	if !w.first.IsZero() && !w.logged { // normal boundaries only: a stall is no measure
		c.lastSpread = max(c.lastSpread, time.Since(w.first))
	}
	c.cfg.Metrics.waited(time.Since(w.since))
	if w.logged {
		c.log.Info("epoch boundary wait over", zap.Int("epoch", w.epoch), zap.Int("generation", w.gen), zap.Duration("waited", time.Since(w.since)))
	}
}

// waitLocked waits, with c.mu held on entry and on return, until done holds or
// ctx ends; every state change is a notify.
func (c *Coordinator) waitLocked(ctx context.Context, done func() bool) error {
	for !done() {
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
		}
		c.mu.Lock()
		if ctx.Err() != nil && !done() {
			return ctx.Err()
		}
	}
	return nil
}

// recorded is the last epoch with a row in the curves. Called with c.mu held.
func (c *Coordinator) recorded() int {
	if len(c.curves) == 0 {
		return 0
	}
	return c.curves[len(c.curves)-1].Epoch
}

// decide checks that the ranks hold the same parameters and prints the epoch.
// Called with c.mu held.
func (c *Coordinator) decide(epoch int) *controlpb.ReportReply {
	reps := c.reports[epoch]
	for _, r := range reps[1:] {
		if r.Checksum != reps[0].Checksum {
			var sums []string
			for _, x := range reps {
				sums = append(sums, fmt.Sprintf("rank %d %016x", x.Rank, x.Checksum))
			}
			c.failed = fmt.Errorf("coordinator: parameters diverged after epoch %d: %s", epoch, strings.Join(sums, ", "))
			return &controlpb.ReportReply{Stop: true, Reason: c.failed.Error()}
		}
	}
	var loss, ips float64
	images := 0
	for _, r := range reps {
		loss += r.TrainLoss * float64(r.Images)
		images += int(r.Images)
		ips += r.ImagesPerS
	}
	if images > 0 {
		loss /= float64(images)
	}
	acc := reps[0].ValAccuracy
	if reps[0].Best {
		c.summary.bestAcc, c.summary.bestEpoch = acc, epoch
	}
	row := epochRow{Epoch: epoch, TrainLoss: loss, ValAccuracy: acc, ImagesPerS: ips,
		WallSeconds: c.wallSoFar + time.Since(c.startedAt).Seconds(), World: len(reps)}
	c.curves = append(c.curves, row)
	c.cfg.Metrics.epochDone(row)
	// On disk before it is announced: a coordinator killed after the line
	// still leaves the row for its --resume.
	if err := writeCurves(c.cfg.Job.Out, c.curves); err != nil {
		c.log.Warn("could not write the training curves", zap.Error(err))
	}
	fmt.Fprintf(c.out, "Epoch %d/%d - Train loss: %.4f - Val Accuracy: %.4f\n", epoch, c.cfg.Job.Epochs, loss, acc)
	c.log.Info("epoch", zap.Int("epoch", epoch), zap.Float64("train_loss", loss), zap.Float64("val_accuracy", acc),
		zap.Float64("img_per_s", ips), zap.Uint64("checksum", reps[0].Checksum))
	c.epochStarted(epoch+1, true)
	if epoch >= c.cfg.Job.Epochs {
		c.finished = true
		return &controlpb.ReportReply{}
	}
	if len(c.joiners) > 0 {
		// Workers that joined late enter here, at the epoch boundary.
		c.beginReform(fmt.Sprintf("%d workers joining after epoch %d", len(c.joiners), epoch))
		return &controlpb.ReportReply{Reform: true}
	}
	return &controlpb.ReportReply{}
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
	c := s.c
	c.mu.Lock()
	if req.Name == "" || req.RingAddr == "" {
		c.mu.Unlock()
		return nil, status.Error(codes.InvalidArgument, "register needs a name and a ring address")
	}
	if req.JobId != "" && req.JobId != c.jobID {
		c.mu.Unlock()
		return nil, status.Errorf(codes.PermissionDenied, "worker %s belongs to job %q; this coordinator runs job %q", req.Name, req.JobId, c.jobID)
	}
	if c.started {
		c.mu.Unlock()
		return s.join(ctx, req)
	}
	if _, dup := c.workers[req.Name]; dup {
		c.mu.Unlock()
		return nil, status.Errorf(codes.AlreadyExists, "a worker named %s is already registered", req.Name)
	}
	if len(c.workers) >= c.cfg.Workers {
		c.mu.Unlock()
		return nil, status.Errorf(codes.ResourceExhausted, "job %s already has its %d workers", c.jobID, c.cfg.Workers)
	}
	c.workers[req.Name] = req
	c.log.Info("worker registered", zap.String("name", req.Name), zap.String("ring_addr", req.RingAddr), zap.String("device", req.Device),
		zap.Int("registered", len(c.workers)), zap.Int("of", c.cfg.Workers))
	c.notify()
	defer c.mu.Unlock()
	if err := c.waitLocked(ctx, func() bool { return c.started || c.failed != nil }); err != nil {
		if !c.started { // the worker gave up waiting: it no longer counts
			delete(c.workers, req.Name)
			c.notify()
		}
		return nil, err
	}
	if c.failed != nil {
		return nil, status.Error(codes.Aborted, c.failed.Error())
	}
	return c.plans[req.Name], nil
}

func (s *controlService) EpochShard(ctx context.Context, req *controlpb.EpochRequest) (*controlpb.Shard, error) {
	c := s.c
	if req.JobId != c.jobID {
		return nil, status.Errorf(codes.InvalidArgument, "job %q is not %s", req.JobId, c.jobID)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed != nil {
		return nil, status.Error(codes.Aborted, c.failed.Error())
	}
	if int(req.Generation) != c.ring.gen || c.reform != nil {
		return &controlpb.Shard{Reform: true}, nil
	}
	if req.Epoch < 0 {
		// A rank opening its ring asks whether the ring still stands: it does.
		return &controlpb.Shard{}, nil
	}
	if c.lostRow != nil && int(req.Epoch) >= c.lostRow.Epoch {
		// A rank starts the epoch after the lost one: nobody reports that
		// one again now.
		c.recordLost()
	}
	shard := &controlpb.Shard{Seed: c.cfg.Job.Seed, Epoch: req.Epoch, World: int32(c.ring.world()), Size: int32(len(c.train.Samples)),
		Dataset: c.train.Fingerprint(), Shuffle: true}
	for _, p := range c.prior[int(req.Epoch)] {
		shard.Prior = append(shard.Prior, &controlpb.Segment{World: int32(p.World), Consumed: int32(p.Consumed)})
	}
	return shard, nil
}

func (s *controlService) Report(ctx context.Context, req *controlpb.EpochReport) (*controlpb.ReportReply, error) {
	return s.c.report(ctx, req)
}
