package coordinator

import (
	"errors"
	"io/fs"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
	"github.com/alexring/alexring/sharding"
)

// sim steps a core in virtual time and does its actions as the Coordinator
// would, in memory: answers are kept by call, timers go off on a virtual
// clock as it passes them, rows and lines are kept.
type sim struct {
	t       *testing.T
	c       *core
	clock   *virtualClock
	next    callID
	calls   map[string]callID // by label
	answers map[callID]answer
	rows    []epochRow // as last written
	writes  int
	lines   []string
	ended   bool
	err     error
}

const statePath = "/out/state.safetensors"

func newSim(t *testing.T, workers int) *sim {
	cfg := coreConfig{Workers: workers, WaitTimeout: time.Second, Epochs: 3, Batch: 12, StatePath: statePath,
		ReadState: func() (configs.Progress, error) { return configs.Progress{}, fs.ErrNotExist },
		JobID:     "job", Incarnation: "i", Plan: &controlpb.JobPlan{JobId: "job", Settings: &controlpb.JobSettings{}}, TrainSize: 36}
	return &sim{t: t, c: newCore(cfg, zap.NewNop(), nil), clock: newVirtualClock(), calls: map[string]callID{}, answers: map[callID]answer{}}
}

func (s *sim) step(ev event) {
	now := s.clock.Now()
	for _, a := range s.c.Step(ev, now) {
		switch a := a.(type) {
		case answer:
			if _, dup := s.answers[a.call]; dup {
				s.t.Errorf("call %d answered twice", a.call)
			}
			s.answers[a.call] = a
		case armTimer:
			s.clock.AfterFunc(a.at.Sub(now), func() { s.step(evTimer{t: a.t}) })
		case writeRows:
			s.rows, s.writes = a.rows, s.writes+1
		case printLine:
			s.lines = append(s.lines, a.text)
		case endJob:
			if s.ended {
				s.t.Error("the job ended twice")
			}
			s.ended, s.err = true, a.err
		}
	}
}

// call steps the event of a call labelled label.
func (s *sim) call(label string, ev func(callID) event) {
	s.next++
	s.calls[label] = s.next
	s.step(ev(s.next))
}

// answerOf is the answer to the call labelled label (ok false: none yet).
func (s *sim) answerOf(label string) (answer, bool) {
	id, ok := s.calls[label]
	if !ok {
		s.t.Fatalf("no call %q", label)
	}
	a, ok := s.answers[id]
	return a, ok
}

// An op is a step of a scenario: an event, the clock moving on, or a check.
type op func(s *sim)

func addr(name string) string { return "10.0.0.1:" + name }

// enroll registers workers (before the start, or late: they join).
func enroll(names ...string) op {
	return func(s *sim) {
		for _, n := range names {
			s.call(n, func(id callID) event {
				return evRegister{call: id, req: &controlpb.RegisterRequest{Name: n, RingAddr: addr(n)}}
			})
		}
	}
}

// restart registers name again at a new address: a new process.
func restart(name string) op {
	return func(s *sim) {
		s.call(name+" again", func(id callID) event {
			return evRegister{call: id, req: &controlpb.RegisterRequest{JobId: "job", Name: name, RingAddr: addr(name) + "-2"}}
		})
	}
}

// reform is a survivor of the current ring asking for its place in the next;
// lost is the rank it found gone (-1: none).
func reform(name string, epoch, steps, lost int) op {
	return func(s *sim) {
		gen := s.c.ring.gen
		s.call("reform "+name, func(id callID) event {
			return evReform{call: id, req: &controlpb.ReformRequest{JobId: "job", Name: name, Generation: int32(gen), Epoch: int32(epoch), Steps: int32(steps),
				LostRank: int32(lost), Reason: "rank lost"}}
		})
	}
}

// report is ranks of the current ring reporting (1-based) epoch with
// checksum sum.
func report(epoch int, sum uint64, ranks ...int) op {
	return func(s *sim) {
		for _, r := range ranks {
			gen := s.c.ring.gen
			s.call(reportLabel(epoch, r), func(id callID) event {
				return evReport{call: id, req: &controlpb.EpochReport{JobId: "job", Rank: int32(r), Epoch: int32(epoch), Checksum: sum, Images: 4,
					TrainLoss: 1, ValAccuracy: 0.5, Generation: int32(gen)}}
			})
		}
	}
}

func reportLabel(epoch, rank int) string {
	return "report " + string(rune('0'+epoch)) + "/" + string(rune('0'+rank))
}

// left is the gossip declaring the worker at ringAddr gone.
func left(name, ringAddr string) op {
	return func(s *sim) { s.step(evMember{left: true, name: name, grpc: ringAddr}) }
}

func wait(d time.Duration) op { return func(s *sim) { s.clock.Advance(d) } }

// giveUp is the caller of the call labelled label giving up.
func giveUp(label string) op {
	return func(s *sim) { s.step(evCancel{call: s.calls[label], err: errors.New("gave up")}) }
}

// pending checks that the calls are still waiting.
func pending(labels ...string) op {
	return func(s *sim) {
		for _, l := range labels {
			if a, ok := s.answerOf(l); ok {
				s.t.Errorf("at %v: %s answered %v %v, want it waiting", s.clock.Now().Sub(time.Unix(1e9, 0)), l, a.msg, a.err)
			}
		}
	}
}

// planned checks the plan the call labelled label got: its world, rank,
// generation, (0-based) epoch, state root and peers.
func planned(label string, world, rank, gen, epoch, root int, peers ...string) op {
	return func(s *sim) {
		a, ok := s.answerOf(label)
		p, _ := a.msg.(*controlpb.JobPlan)
		if !ok || a.err != nil || p == nil {
			s.t.Errorf("at %v: %s: %v %v, want a plan", s.clock.Now().Sub(time.Unix(1e9, 0)), label, a.msg, a.err)
			return
		}
		if int(p.World) != world || int(p.Rank) != rank || int(p.Generation) != gen || int(p.Epoch) != epoch || int(p.StateRoot) != root ||
			(peers != nil && !slices.Equal(p.Peers, peers)) {
			s.t.Errorf("%s's plan: world %d rank %d generation %d epoch %d root %d peers %v; want %d %d %d %d %d %v",
				label, p.World, p.Rank, p.Generation, p.Epoch, p.StateRoot, p.Peers, world, rank, gen, epoch, root, peers)
		}
	}
}

// refused checks that the call labelled label failed with code, saying
// what.
func refused(label string, code codes.Code, what string) op {
	return func(s *sim) {
		a, ok := s.answerOf(label)
		var ce *callError
		switch {
		case !ok:
			s.t.Errorf("%s: no answer, want %v", label, code)
		case code == codes.Unknown && (a.err == nil || !strings.Contains(a.err.Error(), what)):
			s.t.Errorf("%s: %v, want %q", label, a.err, what)
		case code != codes.Unknown && (!errors.As(a.err, &ce) || ce.code != code || !strings.Contains(ce.msg, what)):
			s.t.Errorf("%s: %v, want %v %q", label, a.err, code, what)
		}
	}
}

// verdict checks the reply to a report: reform, stop, or go on.
func verdict(epoch, rank int, want string) op {
	return func(s *sim) {
		a, ok := s.answerOf(reportLabel(epoch, rank))
		r, _ := a.msg.(*controlpb.ReportReply)
		got := "none"
		switch {
		case !ok || r == nil:
		case r.Stop:
			got = "stop"
		case r.Reform:
			got = "reform"
		default:
			got = "go on"
		}
		if got != want {
			s.t.Errorf("rank %d's verdict of epoch %d: %s %v, want %s", rank, epoch, got, a.err, want)
		}
	}
}

// failed checks that the job failed, saying what ("" : that it did not).
func failed(what string) op {
	return func(s *sim) {
		switch {
		case what == "" && s.err != nil:
			s.t.Errorf("the job failed: %v", s.err)
		case what != "" && (s.err == nil || !strings.Contains(s.err.Error(), what)):
			s.t.Errorf("the job's error %v, want %q", s.err, what)
		}
	}
}

// rows checks the epochs of metrics.csv as last written, and the lines
// printed.
func rows(lines int, epochs ...int) op {
	return func(s *sim) {
		var got []int
		for _, r := range s.rows {
			got = append(got, r.Epoch)
		}
		if !slices.Equal(got, epochs) || len(s.lines) != lines {
			s.t.Errorf("rows of epochs %v and %d lines, want %v and %d", got, len(s.lines), epochs, lines)
		}
	}
}

// check runs a check of the core's state.
func check(what string, ok func(c *core) bool) op {
	return func(s *sim) {
		if !ok(s.c) {
			s.t.Errorf("at %v: not %s", s.clock.Now().Sub(time.Unix(1e9, 0)), what)
		}
	}
}

// The coordinator's elastic cases, each a scenario stepped in virtual time:
// the timers (blame grace, the re-formation's timeout, --min-workers' wait)
// go off as the clock passes them, to the millisecond, with no sleep.
func TestCoreScenarios(t *testing.T) {
	a, b, c := addr("w-a"), addr("w-b"), addr("w-c")
	for _, tc := range []struct {
		name    string
		workers int
		cfg     func(*coreConfig)
		ops     []op
	}{
		{name: "the first ring: ranks by name, once all registered", workers: 3, ops: []op{
			enroll("w-c", "w-a"), pending("w-c", "w-a"),
			enroll("w-b"), planned("w-a", 3, 0, 1, 0, 0, a, b, c), planned("w-c", 3, 2, 1, 0, 0, a, b, c),
			enroll("w-d"), pending("w-d"), // late: it waits for the next epoch boundary
		}},
		{name: "a registration given up no longer counts", workers: 2, ops: []op{
			enroll("w-a"), giveUp("w-a"), refused("w-a", codes.Unknown, "gave up"),
			enroll("w-b"), pending("w-b"), enroll("w-c"), planned("w-b", 2, 0, 1, 0, 0, b, c),
		}},
		{name: "a blamed member is left out after the grace", workers: 3, ops: []op{
			enroll("w-a", "w-b", "w-c"),
			reform("w-a", 0, 3, 1), reform("w-c", 0, 4, -1),
			wait(blameGrace - time.Millisecond), pending("reform w-a", "reform w-c"),
			wait(time.Millisecond), planned("reform w-a", 2, 0, 2, 0, 1, a, c), planned("reform w-c", 2, 1, 2, 0, 1, a, c),
			check("the prior segment", func(c *core) bool {
				return len(c.prior[0]) == 1 && c.prior[0][0] == sharding.Segment{World: 3, Consumed: 4 * 4 * 3}
			}),
		}},
		{name: "the gossip ends the wait at once", workers: 3, ops: []op{
			enroll("w-a", "w-b", "w-c"), left("w-b", b),
			reform("w-a", 0, 3, 1), pending("reform w-a"), reform("w-c", 0, 3, 1), planned("reform w-c", 2, 1, 2, 0, 0, a, c),
		}},
		{name: "the timeout leaves out a silent member", workers: 3, cfg: func(c *coreConfig) { c.ReformTimeout = 300 * time.Millisecond }, ops: []op{
			enroll("w-a", "w-b", "w-c"),
			reform("w-a", 0, 1, -1), reform("w-b", 0, 1, -1),
			wait(299 * time.Millisecond), pending("reform w-a"),
			wait(time.Millisecond), planned("reform w-b", 2, 1, 2, 0, 0, a, b),
		}},
		{name: "the default timeout is a minute", workers: 2, ops: []op{
			enroll("w-a", "w-b"), reform("w-a", 0, 1, -1),
			wait(time.Minute - time.Millisecond), pending("reform w-a"), wait(time.Millisecond), planned("reform w-a", 1, 0, 2, 0, 0, a),
		}},
		{name: "below --min-workers, none joins: the job fails", workers: 2, cfg: func(c *coreConfig) { c.MinWorkers = 2 }, ops: []op{
			enroll("w-a", "w-b"), left("w-b", b), reform("w-a", 0, 1, 1),
			wait(time.Second - time.Millisecond), pending("reform w-a"), failed(""),
			wait(time.Millisecond), failed("fewer than --min-workers 2"), failed("worker w-b (rank 1) left the cluster"),
			refused("reform w-a", codes.Aborted, "none joined within 1s"),
		}},
		{name: "below --min-workers, one joins in time", workers: 2, cfg: func(c *coreConfig) { c.MinWorkers = 2 }, ops: []op{
			enroll("w-a", "w-b"), left("w-b", b), reform("w-a", 0, 1, 1),
			wait(500 * time.Millisecond), enroll("w-c"),
			planned("reform w-a", 2, 0, 2, 0, 0, a, c), planned("w-c", 2, 1, 2, 0, 0, a, c),
			wait(time.Hour), failed(""),
		}},
		{name: "a late joiner enters at the epoch boundary", workers: 2, ops: []op{
			enroll("w-b", "w-c"), enroll("w-a"), pending("w-a"),
			report(1, 7, 0, 1), verdict(1, 0, "reform"), verdict(1, 1, "reform"), rows(1, 1),
			reform("w-b", 0, 3, -1), pending("reform w-b", "w-a"), reform("w-c", 0, 3, -1),
			planned("w-a", 3, 0, 2, 1, 1, a, b, c), planned("reform w-b", 3, 1, 2, 1, 1),
			check("no prior segment of the next epoch", func(c *core) bool { return len(c.prior[1]) == 0 }),
		}},
		{name: "a joiner that gives up is forgotten", workers: 2, ops: []op{
			enroll("w-a", "w-b"), enroll("w-c"), giveUp("w-c"), refused("w-c", codes.Unknown, "gave up"),
			report(1, 7, 0, 1), verdict(1, 0, "go on"),
		}},
		{name: "a worker back at a new address replaces its old self at once", workers: 2, ops: []op{
			enroll("w-a", "w-b"), restart("w-b"), pending("w-b again"),
			reform("w-a", 0, 2, 1), planned("reform w-a", 2, 0, 2, 0, 0, a, b+"-2"), planned("w-b again", 2, 1, 2, 0, 0),
			left("w-b", b), check("the old self's leaving ignored", func(c *core) bool { return c.reform == nil && c.alive["w-b"] }),
			restart("w-b"), refused("w-b again", codes.AlreadyExists, "already in job"),
		}},
		{name: "a worker back before its survivors ask completes the re-formation", workers: 2, ops: []op{
			enroll("w-a", "w-b"), reform("w-a", 0, 2, 1), pending("reform w-a"),
			wait(10 * time.Millisecond), restart("w-b"), planned("reform w-a", 2, 0, 2, 0, 0, a, b+"-2"), planned("w-b again", 2, 1, 2, 0, 0),
		}},
		{name: "a late request gets its plan again; one left out is told why", workers: 3, ops: []op{
			enroll("w-a", "w-b", "w-c"), left("w-b", b), reform("w-a", 0, 1, 1), reform("w-c", 0, 1, 1),
			func(s *sim) {
				s.call("late w-a", func(id callID) event {
					return evReform{call: id, req: &controlpb.ReformRequest{JobId: "job", Name: "w-a", Generation: 1, LostRank: 1}}
				})
				s.call("late w-b", func(id callID) event {
					return evReform{call: id, req: &controlpb.ReformRequest{JobId: "job", Name: "w-b", Generation: 1, LostRank: -1}}
				})
			},
			planned("late w-a", 2, 0, 2, 0, 0), refused("late w-b", codes.FailedPrecondition, "left out"),
		}},
		{name: "diverged parameters stop the job", workers: 2, ops: []op{
			enroll("w-a", "w-b"), report(1, 7, 0), report(1, 8, 1),
			verdict(1, 0, "stop"), verdict(1, 1, "stop"), failed("parameters diverged after epoch 1"), rows(0),
		}},
		{name: "the last epoch ends the job", workers: 2, cfg: func(c *coreConfig) { c.Epochs = 1 }, ops: []op{
			enroll("w-a", "w-b"), report(1, 7, 0, 1), verdict(1, 1, "go on"), rows(1, 1),
			check("the job finished", func(c *core) bool { return c.finished && c.failed == nil }),
		}},
		{name: "a report no worker of ours would send", workers: 2, ops: []op{
			enroll("w-a", "w-b"),
			func(s *sim) {
				s.call("bogus", func(id callID) event {
					return evReport{call: id, req: &controlpb.EpochReport{JobId: "job", Rank: 0, Epoch: 1, ValAccuracy: 1e300, Generation: 1}}
				})
			},
			refused("bogus", codes.InvalidArgument, "validation accuracy 1e+300"), rows(0),
		}},
		{name: "a report given up", workers: 2, ops: []op{
			enroll("w-a", "w-b"), report(1, 7, 1), giveUp(reportLabel(1, 1)), refused(reportLabel(1, 1), codes.Unknown, "gave up"),
		}},
		{name: "no survivor: the ring goes on from the state on disk", workers: 2, cfg: func(c *coreConfig) {
			c.ReadState = func() (configs.Progress, error) { return configs.Progress{Epoch: 1, BestAcc: 0.5}, nil }
		}, ops: []op{
			enroll("w-a", "w-b"), report(1, 7, 0, 1), report(2, 7, 0, 1), rows(2, 1, 2),
			restart("w-a"), pending("w-a again"), restart("w-b"),
			planned("w-a again", 2, 0, 2, 1, 0, a+"-2", b+"-2"), rows(2, 1),
			check("the plans carry the state file", func(c *core) bool { return c.plans["w-b"].Settings.GetResume() == statePath }),
			report(2, 7, 0, 1), rows(3, 1, 2),
		}},
		{name: "no survivor: a state saved past the last verdict gets its row", workers: 2, cfg: func(c *coreConfig) {
			c.ReadState = func() (configs.Progress, error) { return configs.Progress{Epoch: 2, BestAcc: 0.75}, nil }
		}, ops: []op{
			enroll("w-a", "w-b"), report(1, 7, 0, 1), restart("w-a"), restart("w-b"),
			planned("w-a again", 2, 0, 2, 2, 0, a+"-2", b+"-2"), rows(1, 1),
			report(3, 7, 0, 1), rows(2, 1, 2, 3), failed(""),
			check("the guessed row holds the state's best", func(c *core) bool { return c.curves[1].ValAccuracy == 0.75 && math.IsNaN(c.curves[1].TrainLoss) }),
		}},
		{name: "no survivor after the last epoch's state was saved: the job is done", workers: 2, cfg: func(c *coreConfig) {
			c.ReadState = func() (configs.Progress, error) { return configs.Progress{Epoch: 3, BestAcc: 0.5}, nil }
		}, ops: []op{
			enroll("w-a", "w-b"), report(1, 7, 0, 1), report(2, 7, 0, 1), restart("w-a"), restart("w-b"),
			rows(2, 1, 2, 3), failed(""), check("the job finished", func(c *core) bool { return c.finished }),
			refused("w-b again", codes.Aborted, "ended before w-b could join"),
		}},
		{name: "no survivor, and a state an earlier job left in --out: the job starts again", workers: 2, cfg: func(c *coreConfig) {
			c.ReadState = func() (configs.Progress, error) { return configs.Progress{Epoch: 7}, nil }
		}, ops: []op{
			enroll("w-a", "w-b"), restart("w-a"), restart("w-b"),
			planned("w-a again", 2, 0, 2, 0, 0, a+"-2", b+"-2"),
			check("the plans carry no state", func(c *core) bool { return c.plans["w-b"].Settings.GetResume() == "" }),
		}},
		{name: "no survivor, and a state of an epoch this job never reached: the job fails", workers: 2, cfg: func(c *coreConfig) {
			c.ReadState = func() (configs.Progress, error) { return configs.Progress{Epoch: 5}, nil }
		}, ops: []op{
			enroll("w-a", "w-b"), report(1, 7, 0, 1), restart("w-a"), restart("w-b"), failed("holds epoch 5"),
		}},
		{name: "no survivor and no state to read: the job fails", workers: 2, ops: []op{
			enroll("w-a", "w-b"), report(1, 7, 0, 1), restart("w-a"), restart("w-b"),
			failed("cannot read"), refused("w-b again", codes.Aborted, "ended before w-b could join"),
		}},
		{name: "no survivor before any epoch ended: the job starts again", workers: 2, ops: []op{
			enroll("w-a", "w-b"), left("w-a", a), left("w-b", b), enroll("w-a"),
			planned("w-a", 1, 0, 2, 0, 0, a), failed(""),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, tc.workers)
			if tc.cfg != nil {
				tc.cfg(&s.c.cfg)
			}
			for _, o := range tc.ops {
				o(s)
			}
		})
	}
}

// A resumed coordinator takes again the reports of the epoch its predecessor
// died in: its row is written once; a report of an epoch already recorded
// (resent by a rank whose verdict was lost) is answered at once and adds
// nothing. A lost epoch nobody reports again gets its row from the state.
func TestCoreResumed(t *testing.T) {
	t.Run("the resent report", func(t *testing.T) {
		s := newSim(t, 2)
		s.c.cfg.Epochs = 5
		s.c.curves, s.c.resumedAt = []epochRow{{Epoch: 1, World: 2}}, 2
		for _, o := range []op{
			enroll("w-a", "w-b"), planned("w-a", 2, 0, 1, 2, 0),
			report(2, 9, 0), pending(reportLabel(2, 0)), report(2, 9, 1), verdict(2, 0, "go on"), rows(1, 1, 2),
			func(s *sim) { clear(s.c.verdicts) }, // as if judged by the coordinator before
			report(2, 9, 1), verdict(2, 1, "go on"), rows(1, 1, 2),
		} {
			o(s)
		}
		if s.writes != 1 || !strings.HasPrefix(s.lines[0], "Epoch 2/5 - Train loss: 1.0000") {
			t.Errorf("%d writes, lines %q", s.writes, s.lines)
		}
	})
	t.Run("the lost row", func(t *testing.T) {
		s := newSim(t, 2)
		s.c.curves, s.c.resumedAt = []epochRow{{Epoch: 1, World: 2}}, 2
		s.c.lostRow = &epochRow{Epoch: 2, ValAccuracy: 0.75, World: 2, WallSeconds: 13}
		enroll("w-a", "w-b")(s)
		s.call("shard", func(id callID) event {
			return evShard{call: id, req: &controlpb.EpochRequest{JobId: "job", Epoch: 2, Generation: 1}}
		})
		rows(0, 1, 2)(s)
		if a, _ := s.answerOf("shard"); a.msg.(*controlpb.Shard).World != 2 || s.c.wallSoFar != 13 {
			t.Errorf("shard %v, wall so far %v", a.msg, s.c.wallSoFar)
		}
		report(3, 7, 0, 1)(s)
		rows(1, 1, 2, 3)(s)
	})
}

// An epoch boundary that waits on a rank past patience is watched once; an
// epoch overdue with no report at all too.
func TestCoreWatchesTheBoundary(t *testing.T) {
	s := newSim(t, 3)
	enroll("w-a", "w-b", "w-c")(s)
	s.clock.Advance(2 * time.Second)
	report(1, 7, 1, 2)(s)
	s.clock.Advance(patience - time.Millisecond)
	if s.c.wait == nil || s.c.wait.logged {
		t.Fatalf("the wait %+v before patience", s.c.wait)
	}
	s.clock.Advance(time.Millisecond)
	if !s.c.wait.logged || s.c.wait.epoch != 1 {
		t.Fatalf("the wait %+v at patience", s.c.wait)
	}
	report(1, 7, 0)(s)
	verdict(1, 0, "go on")(s)
	// The last epoch took 2 s to its first report: the next is overdue past
	// twice that and the slack.
	s.clock.Advance(2*time.Second + overdueSlack - time.Millisecond)
	if s.c.wait != nil {
		t.Fatalf("epoch 2 watched early: %+v", s.c.wait)
	}
	s.clock.Advance(time.Millisecond)
	if w := s.c.wait; w == nil || !w.logged || w.epoch != 2 || len(s.c.missing(2)) != 3 {
		t.Fatalf("the overdue epoch's wait %+v", w)
	}
}
