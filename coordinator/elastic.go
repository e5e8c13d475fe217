package coordinator

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/alexring/alexring/coordinator/controlpb"
	"github.com/alexring/alexring/sharding"
	"github.com/alexring/alexring/worker"
)

// A ring breaks when a worker dies (kill -9, a lost machine) or falls
// silent. The survivors hold identical parameters and Adam state, so the job
// need not go back to a checkpoint: the coordinator forms a new ring of them,
// which takes the state of the survivor that got furthest and trains the
// rest of the epoch, re-sharded over the smaller world.

// blameGrace is how long a re-formation waits for a member that a survivor
// reported gone before leaving it out: a live one asks at once (its own ring
// broke too), while the gossip takes seconds to declare a killed one dead.
const blameGrace = time.Second

// reformation is a re-formation under way: which ring broke, and what each
// survivor said when it asked for its place in the next one.
type reformation struct {
	gen      int // the ring that broke
	began    time.Time
	reason   string
	requests map[string]*controlpb.ReformRequest
	expired  bool // ReformTimeout passed: go on with whoever asked
	// blamed are members a survivor found gone (its stream from them broke);
	// past blameGrace they are not waited for, even before the gossip says so.
	blamed map[string]bool
	short  bool // fewer workers than MinWorkers: waiting for more to join
}

// beginReform starts a re-formation of the current ring, once. Called with
// c.mu held.
func (c *Coordinator) beginReform(reason string) {
	if c.reform != nil || c.finished || c.failed != nil || !c.started {
		return
	}
	r := &reformation{gen: c.ring.gen, began: time.Now(), reason: reason, requests: map[string]*controlpb.ReformRequest{}, blamed: map[string]bool{}}
	c.reform = r
	c.log.Warn("re-forming the ring", zap.Int("generation", r.gen), zap.String("reason", reason))
	timeout := c.cfg.ReformTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	c.later(r, timeout, func() {
		r.expired = true
		c.completeReform()
	})
}

// later runs fn, with c.mu held, after d if r is still the re-formation under
// way, then wakes whoever waits on the coordinator's state.
func (c *Coordinator) later(r *reformation, d time.Duration, fn func()) {
	time.AfterFunc(d, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.reform == r {
			fn()
			c.notify()
		}
	})
}

// completeReform forms the next ring once every member of the broken one
// has asked for its place or is gone from the gossip (or the timeout passed).
// Called with c.mu held.
func (c *Coordinator) completeReform() {
	r := c.reform
	if r == nil {
		return
	}
	var waiting, survivors []string
	for _, name := range c.ring.members {
		switch {
		case r.requests[name] != nil:
			survivors = append(survivors, name)
		case c.alive[name] && !r.expired && !c.joiners[name] && !(r.blamed[name] && time.Since(r.began) >= blameGrace):
			waiting = append(waiting, name)
		}
	}
	if len(waiting) > 0 {
		return
	}
	if len(survivors) == 0 {
		c.reform = nil
		c.failed = fmt.Errorf("coordinator: %s; no worker of the ring is left to carry its state: resume from %s", r.reason, filepath.Join(c.cfg.Job.Out, worker.StateFile))
		return
	}
	minWorkers := max(c.cfg.MinWorkers, 1)
	if len(survivors)+len(c.joiners) < minWorkers {
		if !r.short {
			r.short = true
			c.log.Warn("fewer workers than --min-workers: waiting for more to join", zap.Int("workers", len(survivors)+len(c.joiners)),
				zap.Int("min_workers", minWorkers), zap.Duration("timeout", c.cfg.WaitTimeout))
			c.later(r, c.cfg.WaitTimeout, func() {
				if c.failed == nil {
					c.failed = fmt.Errorf("coordinator: %s; %d workers left (%s), fewer than --min-workers %d, and none joined within %v",
						r.reason, len(survivors), strings.Join(survivors, ", "), minWorkers, c.cfg.WaitTimeout)
				}
			})
		}
		return
	}
	c.reform = nil
	// The survivor furthest along (by epoch, then step) gives its state: the
	// others may have missed its last step if the ring broke mid all-reduce.
	sort.Slice(survivors, func(i, j int) bool {
		a, b := r.requests[survivors[i]], r.requests[survivors[j]]
		if a.Epoch != b.Epoch {
			return a.Epoch > b.Epoch
		}
		if a.Steps != b.Steps {
			return a.Steps > b.Steps
		}
		return c.ring.ranks[survivors[i]] < c.ring.ranks[survivors[j]]
	})
	lead := r.requests[survivors[0]]
	epoch := int(lead.Epoch)
	if c.verdicts[epoch+1] != nil {
		// The furthest survivor's epoch is done and judged (the ring broke at
		// its end, or re-forms there for joiners): the new ring starts the next.
		epoch++
	} else {
		// What the broken ring trained of this epoch is a prefix of its order:
		// steps x per-rank batch x world positions.
		c.prior[epoch] = append(c.prior[epoch], sharding.Segment{World: c.ring.world(), Consumed: int(lead.Steps) * c.ring.batch * c.ring.world()})
	}
	// Reports of unfinished epochs came from the old ring; the new one reports
	// them again.
	for e := range c.reports {
		if c.verdicts[e] == nil {
			delete(c.reports, e)
		}
	}
	old := c.ring
	rootName := survivors[0]
	joined := make([]string, 0, len(c.joiners))
	for name := range c.joiners {
		joined = append(joined, name)
	}
	clear(c.joiners)
	c.formRing(append(survivors, joined...), epoch, rootName)
	c.log.Info("ring re-formed", zap.Int("generation", c.ring.gen), zap.Int("world", c.ring.world()), zap.Int("was", old.world()),
		zap.Strings("members", c.ring.members), zap.Strings("joined", joined), zap.Int("epoch", epoch+1), zap.Int("steps_done_in_epoch", int(lead.Steps)),
		zap.String("state_from", rootName), zap.Int("batch_per_rank", c.ring.batch), zap.Duration("took", time.Since(r.began)))
}

func (s *controlService) Reform(ctx context.Context, req *controlpb.ReformRequest) (*controlpb.JobPlan, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if req.JobId != c.jobID {
		return nil, status.Errorf(codes.PermissionDenied, "worker %s belongs to job %q; this coordinator runs job %q", req.Name, req.JobId, c.jobID)
	}
	if c.failed != nil {
		return nil, status.Error(codes.Aborted, c.failed.Error())
	}
	if int(req.Generation) < c.ring.gen {
		// The ring was re-formed while this worker was not looking.
		if p := c.plans[req.Name]; p != nil {
			return p, nil
		}
		return nil, status.Errorf(codes.FailedPrecondition, "worker %s is not in ring %d of job %s: it was left out when the ring re-formed", req.Name, c.ring.gen, c.jobID)
	}
	if _, ok := c.ring.ranks[req.Name]; !ok || int(req.Generation) != c.ring.gen {
		return nil, status.Errorf(codes.FailedPrecondition, "worker %s asks to re-form ring %d, but ring %d of job %s does not hold it", req.Name, req.Generation, c.ring.gen, c.jobID)
	}
	c.beginReform(fmt.Sprintf("rank %d (%s): %s", c.ring.ranks[req.Name], req.Name, req.Reason))
	r := c.reform
	if r == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "job %s is over", c.jobID)
	}
	r.requests[req.Name] = req
	if lost := int(req.LostRank); lost >= 0 && lost < c.ring.world() && c.ring.members[lost] != req.Name {
		if name := c.ring.members[lost]; !r.blamed[name] {
			r.blamed[name] = true
			c.later(r, blameGrace-time.Since(r.began), c.completeReform)
		}
	}
	c.log.Info("survivor reporting", zap.String("worker", req.Name), zap.Int("epoch", int(req.Epoch)+1), zap.Int("steps", int(req.Steps)), zap.String("reason", req.Reason))
	c.completeReform()
	c.notify()
	gen := int(req.Generation)
	if err := c.waitLocked(ctx, func() bool { return c.ring.gen > gen || c.failed != nil }); err != nil {
		return nil, err
	}
	if c.failed != nil {
		return nil, status.Error(codes.Aborted, c.failed.Error())
	}
	if p := c.plans[req.Name]; p != nil {
		return p, nil
	}
	return nil, status.Errorf(codes.FailedPrecondition, "worker %s was left out of ring %d of job %s", req.Name, c.ring.gen, c.jobID)
}

// join registers a worker after the job started: it enters the ring at the
// next epoch boundary (or at once when a re-formation is waiting for workers),
// taking the current parameters and Adam state from the ring. A name that is
// in the ring and alive at the same address is refused; a member's name at a
// new address is that member restarted, and replaces it.
func (s *controlService) join(ctx context.Context, req *controlpb.RegisterRequest) (*controlpb.JobPlan, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished || c.failed != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "job %s is over; %s cannot join it", c.jobID, req.Name)
	}
	_, member := c.ring.ranks[req.Name]
	if member && c.alive[req.Name] && c.workers[req.Name].RingAddr != req.RingAddr {
		// The same name at a new address is a restarted worker (a Kubernetes
		// pod keeps its name): its old process is gone, whatever the gossip
		// says yet.
		c.log.Warn("worker came back at a new address; its old process is gone", zap.String("name", req.Name),
			zap.String("was", c.workers[req.Name].RingAddr), zap.String("now", req.RingAddr))
		c.alive[req.Name] = false
		c.cfg.Metrics.workerLost()
		c.beginReform(fmt.Sprintf("worker %s (rank %d) restarted", req.Name, c.ring.ranks[req.Name]))
	} else if (member && c.alive[req.Name]) || c.joiners[req.Name] {
		return nil, status.Errorf(codes.AlreadyExists, "a worker named %s is already in job %s", req.Name, c.jobID)
	}
	c.workers[req.Name] = req
	c.joiners[req.Name] = true
	c.alive[req.Name] = true
	c.log.Info("worker joining; it enters at the next epoch boundary", zap.String("name", req.Name), zap.String("ring_addr", req.RingAddr))
	c.completeReform() // a re-formation short of workers may be waiting for it
	c.notify()
	gen := c.ring.gen
	err := c.waitLocked(ctx, func() bool {
		_, in := c.ring.ranks[req.Name]
		return (in && c.ring.gen > gen) || c.failed != nil || c.finished
	})
	if err != nil || c.failed != nil || c.finished {
		delete(c.joiners, req.Name)
		if err != nil {
			return nil, err
		}
		return nil, status.Errorf(codes.Aborted, "job %s ended before %s could join it", c.jobID, req.Name)
	}
	return c.plans[req.Name], nil
}
