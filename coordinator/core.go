package coordinator

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
	"github.com/alexring/alexring/sharding"
)

// core holds the coordinator's decisions as a state machine, after
// etcd-io/raft's: Step takes one event at a time (a worker's call, a change
// in the gossip, a timer, a call given up) and returns what it decided
// (answer a call, write the curves, print a line, arm a timer, end the job);
// the Coordinator around it does that. Step starts no goroutine and reads no
// clock: the time comes with each event, so the tests step it in virtual
// time. Its one I/O is reading the state file's progress through
// cfg.ReadState (as raft's core reads its Storage), when no worker of a ring
// is left; it logs and keeps the metrics, which only observe.
type core struct {
	cfg     coreConfig
	log     *zap.Logger
	metrics *Metrics
	now     time.Time // the time of the event being stepped
	acts    []action  // what the event being stepped decided

	calls    map[callID]*pendingCall // calls that wait for the state to change
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
	curves  []epochRow
}

// coreConfig is what the decisions need of the job.
type coreConfig struct {
	Workers    int // world size to wait for
	MinWorkers int // the smallest ring the job goes on with (0: 1)
	// ReformTimeout and WaitTimeout are Config's (0 ReformTimeout: a minute).
	ReformTimeout, WaitTimeout time.Duration
	Epochs                     int
	Batch                      int // the global batch, shared by the ranks
	WorkerBatch                int // a fixed batch per rank instead (0: none)
	Seed                       uint64
	StatePath                  string // the training state in --out
	// ReadState reads the epoch and best accuracy of the state at StatePath:
	// the job goes on from it when no worker of a ring is left.
	ReadState          func() (configs.Progress, error)
	JobID, Incarnation string
	// Plan is what every rank's plan carries (job id, config, classes,
	// dataset); the ring's own fields are filled in per rank.
	Plan      *controlpb.JobPlan
	TrainSize int
	Dataset   uint64 // the train split's fingerprint
}

func newCore(cfg coreConfig, log *zap.Logger, metrics *Metrics) *core {
	return &core{
		cfg: cfg, log: log, metrics: metrics, calls: map[callID]*pendingCall{},
		workers: map[string]*controlpb.RegisterRequest{}, alive: map[string]bool{}, joiners: map[string]bool{},
		reports: map[int][]*controlpb.EpochReport{}, verdicts: map[int]*controlpb.ReportReply{}, prior: map[int][]sharding.Segment{},
		failedLinks: map[link]bool{}, leftOut: map[string]string{},
	}
}

// callID names a call that may wait: its answer can come in a later Step.
type callID uint64

// An event is what Step reacts to.
type event interface{ isEvent() }

type (
	// evRegister is a worker's Register call (before the start, or a late
	// joiner after it).
	evRegister struct {
		call callID
		req  *controlpb.RegisterRequest
	}
	// evReform is a survivor's Reform call: its ring broke.
	evReform struct {
		call callID
		req  *controlpb.ReformRequest
	}
	// evReport is a rank's Report of an epoch; deadline is when its call
	// gives up (zero: never).
	evReport struct {
		call     callID
		req      *controlpb.EpochReport
		deadline time.Time
	}
	// evShard is a rank's EpochShard call, answered at once.
	evShard struct {
		call callID
		req  *controlpb.EpochRequest
	}
	// evCancel is a waiting call given up by its caller (err: why).
	evCancel struct {
		call callID
		err  error
	}
	// evMember is the gossip finding a worker alive (left false) or gone.
	evMember struct {
		left bool
		name string
		grpc string // the worker's ring address, as its gossip meta says
	}
	// evTimer is a timer armed by an armTimer action going off.
	evTimer struct{ t timer }
	// evDone is a --resume that found every epoch trained: the lost row, if
	// any, is written now.
	evDone struct{}
)

func (evRegister) isEvent() {}
func (evReform) isEvent()   {}
func (evReport) isEvent()   {}
func (evShard) isEvent()    {}
func (evCancel) isEvent()   {}
func (evMember) isEvent()   {}
func (evTimer) isEvent()    {}
func (evDone) isEvent()     {}

// An action is what Step decided, for the Coordinator to do.
type action interface{ isAction() }

type (
	// answer ends a call: msg is its reply, else err.
	answer struct {
		call callID
		msg  proto.Message
		err  error
	}
	// writeRows rewrites metrics.csv and the plot with rows.
	writeRows struct{ rows []epochRow }
	// printLine prints a line of the job's output.
	printLine struct{ text string }
	// armTimer asks for evTimer{t} at at.
	armTimer struct {
		t  timer
		at time.Time
	}
	// ringFormed says a ring formed; first: the job's first.
	ringFormed struct{ first bool }
	// endJob says the job is over: err nil, every epoch is trained.
	endJob struct{ err error }
)

func (answer) isAction()     {}
func (writeRows) isAction()  {}
func (printLine) isAction()  {}
func (armTimer) isAction()   {}
func (ringFormed) isAction() {}
func (endJob) isAction()     {}

// A timer is a decision put off: what to look at again, and of which ring
// (a timer of a ring since gone does nothing).
type timer struct {
	kind  timerKind
	gen   int // the ring (a re-formation's: the broken one)
	epoch int // timerWait: the epoch boundary
}

type timerKind int

const (
	timerReform     timerKind = iota + 1 // ReformTimeout: go on with whoever asked
	timerBlame                           // blameGrace after a survivor blamed a member
	timerMinWorkers                      // WaitTimeout with fewer workers than MinWorkers
	timerWait                            // an epoch boundary to check for workers that do not report
)

// callError is a refused or failed call: the adapter turns code into the
// call's gRPC status.
type callError struct {
	code codes.Code
	msg  string
}

func (e *callError) Error() string { return e.msg }

func refuse(code codes.Code, format string, args ...any) error {
	return &callError{code: code, msg: fmt.Sprintf(format, args...)}
}

// pendingCall is a call waiting for the state to change.
type pendingCall struct {
	kind  callKind
	name  string // the worker's
	gen   int    // the ring when it began waiting
	epoch int    // callReport's
}

type callKind int

const (
	callRegister callKind = iota + 1 // before the start: waits for it
	callJoin                         // after the start: waits for a ring that holds it
	callReform                       // waits for the next ring
	callReport                       // waits for the epoch's verdict
)

// Step takes one event at time now and returns what it decided.
func (c *core) Step(ev event, now time.Time) []action {
	c.now, c.acts = now, nil
	switch e := ev.(type) {
	case evRegister:
		c.register(e)
	case evReform:
		c.reformCall(e)
	case evReport:
		c.report(e)
	case evShard:
		c.shard(e)
	case evCancel:
		c.cancel(e)
	case evMember:
		c.member(e)
	case evTimer:
		c.fire(e.t)
	case evDone:
		c.recordLost()
	}
	c.settle()
	return c.acts
}

func (c *core) do(a action) { c.acts = append(c.acts, a) }

func (c *core) reply(call callID, msg proto.Message, err error) {
	c.do(answer{call: call, msg: msg, err: err})
}

func (c *core) after(t timer, d time.Duration) { c.do(armTimer{t: t, at: c.now.Add(d)}) }

// fail ends the job with err, once.
func (c *core) fail(err error) {
	if c.failed == nil {
		c.failed = err
		c.do(endJob{err: err})
	}
}

// settle answers the waiting calls whose wait is over, in the order they
// came.
func (c *core) settle() {
	ids := make([]callID, 0, len(c.calls))
	for id := range c.calls {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if msg, err, ok := c.outcome(c.calls[id]); ok {
			delete(c.calls, id)
			c.reply(id, msg, err)
		}
	}
}

// outcome is a waiting call's answer, once its wait is over (ok).
func (c *core) outcome(p *pendingCall) (msg proto.Message, err error, ok bool) {
	switch p.kind {
	case callRegister:
		if c.failed != nil {
			return nil, refuse(codes.Aborted, "%s", c.failed.Error()), true
		}
		return c.plans[p.name], nil, c.started
	case callJoin:
		if c.failed != nil || c.finished {
			delete(c.joiners, p.name)
			return nil, refuse(codes.Aborted, "job %s ended before %s could join it", c.cfg.JobID, p.name), true
		}
		_, in := c.ring.ranks[p.name]
		return c.plans[p.name], nil, in && c.ring.gen > p.gen
	case callReform:
		if c.failed != nil {
			return nil, refuse(codes.Aborted, "%s", c.failed.Error()), true
		}
		if c.ring.gen <= p.gen {
			return nil, nil, false
		}
		if pl := c.plans[p.name]; pl != nil {
			return pl, nil, true
		}
		if why := c.leftOut[p.name]; why != "" {
			return nil, refuse(codes.FailedPrecondition, "worker %s was left out of ring %d of job %s: %s", p.name, c.ring.gen, c.cfg.JobID, why), true
		}
		return nil, refuse(codes.FailedPrecondition, "worker %s was left out of ring %d of job %s", p.name, c.ring.gen, c.cfg.JobID), true
	case callReport:
		if v := c.verdicts[p.epoch]; v != nil {
			return v, nil, true
		}
		if c.failed != nil {
			return &controlpb.ReportReply{Stop: true, Reason: c.failed.Error()}, nil, true
		}
		return &controlpb.ReportReply{Reform: true}, nil, c.ring.gen != p.gen || c.reform != nil
	}
	return nil, nil, false
}

// cancel answers a call given up while it waited: a worker that stops
// waiting for the start, or to join, no longer counts.
func (c *core) cancel(e evCancel) {
	p := c.calls[e.call]
	if p == nil {
		return // answered already
	}
	delete(c.calls, e.call)
	switch p.kind {
	case callRegister:
		if !c.started {
			delete(c.workers, p.name)
		}
	case callJoin:
		delete(c.joiners, p.name)
	}
	c.reply(e.call, nil, e.err)
}

func (c *core) hold(call callID, p *pendingCall) { c.calls[call] = p }

// register takes a worker's registration: before the start it counts
// towards the world, whose last member starts the job; after, it joins.
func (c *core) register(e evRegister) {
	req := e.req
	switch {
	case req.Name == "" || req.RingAddr == "":
		c.reply(e.call, nil, refuse(codes.InvalidArgument, "register needs a name and a ring address"))
		return
	case req.JobId != "" && req.JobId != c.cfg.JobID:
		c.reply(e.call, nil, refuse(codes.PermissionDenied, "worker %s belongs to job %q; this coordinator runs job %q", req.Name, req.JobId, c.cfg.JobID))
		return
	case c.started:
		c.join(e)
		return
	}
	if _, dup := c.workers[req.Name]; dup {
		c.reply(e.call, nil, refuse(codes.AlreadyExists, "a worker named %s is already registered", req.Name))
		return
	}
	if len(c.workers) >= c.cfg.Workers {
		c.reply(e.call, nil, refuse(codes.ResourceExhausted, "job %s already has its %d workers", c.cfg.JobID, c.cfg.Workers))
		return
	}
	c.workers[req.Name] = req
	c.log.Info("worker registered", zap.String("name", req.Name), zap.String("ring_addr", req.RingAddr), zap.String("device", req.Device),
		zap.Int("registered", len(c.workers)), zap.Int("of", c.cfg.Workers))
	c.hold(e.call, &pendingCall{kind: callRegister, name: req.Name})
	if len(c.workers) == c.cfg.Workers {
		c.start()
	}
}

// start assigns ranks in sorted-name order and makes every worker's plan.
func (c *core) start() {
	names := make([]string, 0, len(c.workers))
	for name := range c.workers {
		names = append(names, name)
		c.alive[name] = true
	}
	sort.Strings(names)
	c.formRing(names, c.resumedAt, "")
	c.started = true
	c.startedAt = c.now
}

// formRing makes the next ring of names, by rank (sorted names, unless
// failed links asked for another order), starting in epoch with every rank
// taking root's state (rank 0's when root is empty), and each member's plan.
func (c *core) formRing(names []string, epoch int, root string) {
	world := len(names)
	batch := c.cfg.WorkerBatch
	if batch <= 0 {
		// The global batch stays (nearly) what it was: each rank takes the
		// nearest whole share.
		batch = max(1, int(math.Round(float64(c.cfg.Batch)/float64(world))))
	}
	peers := make([]string, world)
	first := c.ring.gen == 0
	c.ring = ringState{gen: c.ring.gen + 1, members: names, peers: peers, ranks: map[string]int{}, batch: batch}
	for r, name := range names {
		c.ring.ranks[name] = r
		peers[r] = c.workers[name].RingAddr
	}
	rootRank := c.ring.ranks[root] // 0 when root is empty
	c.plans = map[string]*controlpb.JobPlan{}
	for r, name := range names {
		p := proto.Clone(c.cfg.Plan).(*controlpb.JobPlan)
		p.Rank, p.World, p.Peers = int32(r), int32(world), peers
		p.RingId = fmt.Sprintf("%s-%s-ring-%d", c.cfg.JobID, c.cfg.Incarnation, c.ring.gen)
		p.Generation, p.BatchPerRank, p.Epoch, p.StateRoot = int32(c.ring.gen), int32(batch), int32(epoch), int32(rootRank)
		p.LocalPeers = c.localPeers(names, name)
		c.plans[name] = p
		c.log.Info("rank assigned", zap.String("worker", name), zap.Int("rank", r), zap.Int("generation", c.ring.gen),
			zap.String("ring_addr", peers[r]), zap.String("device", c.workers[name].Device))
	}
	c.metrics.ringFormed(world)
	c.do(ringFormed{first: first})
	consumed := 0
	for _, seg := range c.prior[epoch] {
		consumed += seg.Consumed
	}
	c.epochStarted(epoch+1, consumed == 0)
}

// localPeers are, by rank, the Unix sockets of the ranks of names on self's
// host, self's own too ("" for the others and those without one; nil when
// there are none): self's ring dials them instead of their ring addresses
// (allreduce's local.go), and cuts its chunks by whether every rank has one,
// which every rank of the ring then sees alike. The ring address stays a
// worker's identity here.
func (c *core) localPeers(names []string, self string) []string {
	host := c.workers[self].Host
	if host == "" {
		return nil
	}
	var local []string
	for r, name := range names {
		if w := c.workers[name]; w.Host == host && w.LocalAddr != "" {
			if local == nil {
				local = make([]string, len(names))
			}
			local[r] = w.LocalAddr
		}
	}
	return local
}

// member reacts to the gossip: a member of the ring leaving (or failing)
// starts a re-formation without it.
func (c *core) member(e evMember) {
	if !c.started {
		return
	}
	if w := c.workers[e.name]; w != nil && e.left && e.grpc != "" && e.grpc != w.RingAddr {
		// The gossip declares dead the process that had this name before
		// (a pod restarted under it): the one registered now is another.
		c.log.Info("an earlier process of a worker left; the one registered under its name stays", zap.String("name", e.name),
			zap.String("left", e.grpc), zap.String("registered", w.RingAddr))
		return
	}
	c.alive[e.name] = !e.left
	if c.joiners[e.name] && e.left {
		delete(c.joiners, e.name)
	}
	if _, ok := c.ring.ranks[e.name]; ok && e.left {
		c.metrics.workerLost()
		c.beginReform(fmt.Sprintf("worker %s (rank %d) left the cluster", e.name, c.ring.ranks[e.name]))
		c.completeReform() // it may have been the last one a re-formation waited for
	}
}

// shard answers a rank's request for an epoch's shard.
func (c *core) shard(e evShard) {
	req := e.req
	switch {
	case req.JobId != c.cfg.JobID:
		c.reply(e.call, nil, refuse(codes.InvalidArgument, "job %q is not %s", req.JobId, c.cfg.JobID))
		return
	case c.failed != nil:
		c.reply(e.call, nil, refuse(codes.Aborted, "%s", c.failed.Error()))
		return
	case int(req.Generation) != c.ring.gen || c.reform != nil:
		c.reply(e.call, &controlpb.Shard{Reform: true}, nil)
		return
	case req.Epoch < 0:
		// A rank opening its ring asks whether the ring still stands: it does.
		c.reply(e.call, &controlpb.Shard{}, nil)
		return
	}
	if c.lostRow != nil && int(req.Epoch) >= c.lostRow.Epoch {
		// A rank starts the epoch after the lost one: nobody reports that
		// one again now.
		c.recordLost()
	}
	shard := &controlpb.Shard{Seed: c.cfg.Seed, Epoch: req.Epoch, World: int32(c.ring.world()), Size: int32(c.cfg.TrainSize),
		Dataset: c.cfg.Dataset, Shuffle: true}
	for _, p := range c.prior[int(req.Epoch)] {
		shard.Prior = append(shard.Prior, &controlpb.Segment{World: int32(p.World), Consumed: int32(p.Consumed)})
	}
	c.reply(e.call, shard, nil)
}

// report records a rank's epoch and, once all ranks are in, decides.
func (c *core) report(e evReport) {
	rep := e.req
	if !c.started || rep.JobId != c.cfg.JobID || int(rep.Rank) >= c.ring.world() || rep.Rank < 0 {
		c.reply(e.call, nil, refuse(codes.InvalidArgument, "report for job %q rank %d does not belong to job %s", rep.JobId, rep.Rank, c.cfg.JobID))
		return
	}
	if !(rep.ValAccuracy >= 0 && rep.ValAccuracy <= 1) || rep.Images < 0 {
		// A fraction of the validation set, and a count: what else came from
		// no worker of ours.
		c.reply(e.call, nil, refuse(codes.InvalidArgument, "report of rank %d: validation accuracy %g, %d images", rep.Rank, rep.ValAccuracy, rep.Images))
		return
	}
	if int(rep.Generation) != c.ring.gen || c.reform != nil {
		c.reply(e.call, &controlpb.ReportReply{Reform: true}, nil)
		return
	}
	epoch := int(rep.Epoch)
	if c.lostRow != nil && epoch > c.lostRow.Epoch {
		c.recordLost()
	}
	if c.verdicts[epoch] == nil && epoch <= c.recorded() {
		// A report that found its coordinator gone, sent again to this
		// resumed one, of an epoch the earlier coordinator had recorded.
		c.reply(e.call, &controlpb.ReportReply{}, nil)
		return
	}
	if c.reports[epoch] == nil {
		c.reports[epoch] = make([]*controlpb.EpochReport, c.ring.world())
	}
	c.reports[epoch][rep.Rank] = rep
	complete := true
	for _, r := range c.reports[epoch] {
		complete = complete && r != nil
	}
	c.reported(epoch, e.deadline)
	c.hold(e.call, &pendingCall{kind: callReport, gen: c.ring.gen, epoch: epoch})
	if complete {
		c.verdicts[epoch] = c.decide(epoch)
	}
}

// recorded is the last epoch with a row in the curves.
func (c *core) recorded() int {
	if len(c.curves) == 0 {
		return 0
	}
	return c.curves[len(c.curves)-1].Epoch
}

// decide checks that the ranks hold the same parameters, records the epoch's
// row and prints its line.
func (c *core) decide(epoch int) *controlpb.ReportReply {
	reps := c.reports[epoch]
	for _, r := range reps[1:] {
		if r.Checksum != reps[0].Checksum {
			var sums []string
			for _, x := range reps {
				sums = append(sums, fmt.Sprintf("rank %d %016x", x.Rank, x.Checksum))
			}
			c.fail(fmt.Errorf("coordinator: parameters diverged after epoch %d: %s", epoch, strings.Join(sums, ", ")))
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
		WallSeconds: c.wallSoFar + c.now.Sub(c.startedAt).Seconds(), World: len(reps)}
	c.curves = append(c.curves, row)
	c.metrics.epochDone(row)
	// On disk before it is announced: a coordinator killed after the line
	// still leaves the row for its --resume.
	c.do(writeRows{rows: slices.Clone(c.curves)})
	c.do(printLine{fmt.Sprintf("Epoch %d/%d - Train loss: %.4f - Val Accuracy: %.4f\n", epoch, c.cfg.Epochs, loss, acc)})
	c.log.Info("epoch", zap.Int("epoch", epoch), zap.Float64("train_loss", loss), zap.Float64("val_accuracy", acc),
		zap.Float64("img_per_s", ips), zap.Uint64("checksum", reps[0].Checksum))
	c.epochStarted(epoch+1, true)
	if epoch >= c.cfg.Epochs {
		c.finished = true
		c.do(endJob{})
		return &controlpb.ReportReply{}
	}
	if len(c.joiners) > 0 {
		// Workers that joined late enter here, at the epoch boundary.
		c.beginReform(fmt.Sprintf("%d workers joining after epoch %d", len(c.joiners), epoch))
		return &controlpb.ReportReply{Reform: true}
	}
	return &controlpb.ReportReply{}
}

// guessRow is the row of epoch st.Epoch, which the curves lack, from what is
// known without the workers' reports; NaN for what is not. Its validation
// accuracy is the state's best when that beats every earlier epoch's (it was
// this epoch's); its wall time, wall; its world, the last row's (else world).
// Train loss and images per second are unknown.
func (c *core) guessRow(st configs.Progress, wall float64, world int) *epochRow {
	nan := math.NaN()
	row := &epochRow{Epoch: st.Epoch, TrainLoss: nan, ValAccuracy: nan, ImagesPerS: nan, WallSeconds: wall, World: world}
	best := math.Inf(-1)
	for _, r := range c.curves {
		best = max(best, r.ValAccuracy)
	}
	if len(c.curves) == 0 || st.BestAcc > best {
		row.ValAccuracy = st.BestAcc
	}
	if n := len(c.curves); n > 0 {
		row.World = c.curves[n-1].World
	}
	return row
}

// recordLost writes the row of the epoch lost with the last coordinator
// (lostRow), once the job trains past that epoch: the workers that would
// report it again have had their turn.
func (c *core) recordLost() {
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
	c.do(writeRows{rows: slices.Clone(c.curves)})
	c.log.Warn("no worker reported the epoch lost with the last coordinator; its row holds what the state tells (NaN: unknown)",
		zap.Int("epoch", row.Epoch), zap.Float64("val_accuracy", row.ValAccuracy), zap.Float64("wall_s", row.WallSeconds))
}

// fire acts on a timer that went off, if what armed it still holds.
func (c *core) fire(t timer) {
	if t.kind == timerWait {
		c.checkWait(t.gen, t.epoch)
		return
	}
	r := c.reform
	if r == nil || r.gen != t.gen {
		return // that re-formation is over
	}
	switch t.kind {
	case timerReform:
		r.expired = true
		c.completeReform()
	case timerBlame:
		c.completeReform()
	case timerMinWorkers:
		c.fail(r.shortErr)
	}
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
