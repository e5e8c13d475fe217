package coordinator

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"github.com/alexring/alexring/internal/cluster/controlpb"
	"github.com/alexring/alexring/sharding"
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
	// shortErr fails the job if no worker joins within WaitTimeout.
	shortErr error
}

// beginReform starts a re-formation of the current ring, once.
func (c *core) beginReform(reason string) {
	if c.reform != nil || c.finished || c.failed != nil || !c.started {
		return
	}
	r := &reformation{gen: c.ring.gen, began: c.now, reason: reason, requests: map[string]*controlpb.ReformRequest{}, blamed: map[string]bool{}}
	c.reform = r
	c.log.Warn("re-forming the ring", zap.Int("generation", r.gen), zap.String("reason", reason))
	timeout := c.cfg.ReformTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	c.after(timer{kind: timerReform, gen: r.gen}, timeout)
}

// completeReform forms the next ring once every member of the broken one
// has asked for its place or is gone from the gossip (or the timeout passed).
func (c *core) completeReform() {
	r := c.reform
	if r == nil || c.failed != nil || c.finished {
		return
	}
	var survivors []string
	for _, name := range c.ring.members {
		switch {
		case r.requests[name] != nil:
			survivors = append(survivors, name)
		case c.alive[name] && !r.expired && !c.joiners[name] && !(r.blamed[name] && c.now.Sub(r.began) >= blameGrace):
			return // still waiting for it
		}
	}
	// With no survivor (every rank died, or came back as a new process), the
	// state on disk is all that is left: the workers that join go on from it.
	fromDisk := len(survivors) == 0
	// The next ring: survivors and joiners, by name, in the order that uses
	// no failed link, leaving out as few as it must.
	joined := make([]string, 0, len(c.joiners))
	for name := range c.joiners {
		joined = append(joined, name)
	}
	candidates := append(append([]string(nil), survivors...), joined...)
	sort.Strings(candidates)
	failed, suspect := c.linksAfter(r)
	next := chooseRing(candidates, failed, suspect)
	var kept, dropped []string
	for _, name := range survivors {
		if slices.Contains(next, name) {
			kept = append(kept, name)
		} else {
			dropped = append(dropped, name)
		}
	}
	if len(kept) == 0 && !fromDisk { // cannot happen (a joiner's links are all untried); the state must come from a survivor
		kept, next = survivors[:1], survivors[:1]
	}
	if minWorkers := max(c.cfg.MinWorkers, 1); len(next) < minWorkers {
		if !r.short {
			c.waitForJoiners(r, len(next), kept, dropped, failed, fromDisk)
		}
		return
	}
	c.reform = nil
	if fromDisk {
		c.restartFromDisk(r, next)
		return
	}
	c.restartFromSurvivors(r, next, kept, dropped, joined, failed, suspect)
}

// waitForJoiners puts off re-formation r, which has only world workers,
// fewer than MinWorkers (kept of the survivors, dropped left out by failed
// links; none of them when fromDisk): the job fails unless more join within
// WaitTimeout.
func (c *core) waitForJoiners(r *reformation, world int, kept, dropped []string, failed map[link]bool, fromDisk bool) {
	minWorkers := max(c.cfg.MinWorkers, 1)
	r.short = true
	c.log.Warn("fewer workers than --min-workers: waiting for more to join", zap.Int("workers", world), zap.Strings("left_out", dropped),
		zap.Stringers("failed_links", linksOf(failed, dropped)), zap.Int("min_workers", minWorkers), zap.Duration("timeout", c.cfg.WaitTimeout))
	why := ""
	if len(dropped) > 0 {
		why = fmt.Sprintf(" (%s left out: no ring order avoids the failed links %s)", strings.Join(dropped, ", "), joinLinks(linksOf(failed, dropped)))
	}
	left := fmt.Sprintf("%d workers left (%s)%s", len(kept), strings.Join(kept, ", "), why)
	if fromDisk {
		left = fmt.Sprintf("no worker of the ring is left (the job goes on from %s when workers join)", c.cfg.StatePath)
	}
	r.shortErr = fmt.Errorf("coordinator: %s; %s, fewer than --min-workers %d, and none joined within %v",
		r.reason, left, minWorkers, c.cfg.WaitTimeout)
	c.after(timer{kind: timerMinWorkers, gen: r.gen}, c.cfg.WaitTimeout)
}

// restartFromSurvivors forms ring next from the survivors of re-formation
// r (kept; dropped are left out by the failed links) and the workers that
// joined: every rank takes the state of the survivor furthest along.
func (c *core) restartFromSurvivors(r *reformation, next, kept, dropped, joined []string, failed, suspect map[link]bool) {
	// The survivor furthest along (by epoch, then step) gives its state: the
	// others may have missed its last step if the ring broke mid all-reduce.
	sort.Slice(kept, func(i, j int) bool {
		a, b := r.requests[kept[i]], r.requests[kept[j]]
		if a.Epoch != b.Epoch {
			return a.Epoch > b.Epoch
		}
		if a.Steps != b.Steps {
			return a.Steps > b.Steps
		}
		return c.ring.ranks[kept[i]] < c.ring.ranks[kept[j]]
	})
	lead := r.requests[kept[0]]
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
	rootName := kept[0]
	clear(c.joiners)
	clear(c.leftOut)
	for _, name := range dropped {
		c.leftOut[name] = fmt.Sprintf("no ring order avoids its failed links %s", joinLinks(linksOf(failed, []string{name})))
	}
	c.noteLinks(failed, suspect, r)
	c.formRing(next, epoch, rootName)
	c.log.Info("ring re-formed", zap.Int("generation", c.ring.gen), zap.Int("world", c.ring.world()), zap.Int("was", old.world()),
		zap.Strings("members", c.ring.members), zap.Strings("joined", joined), zap.Strings("left_out", dropped), zap.Stringers("failed_links", linksOf(failed, nil)),
		zap.Int("epoch", epoch+1), zap.Int("steps_done_in_epoch", int(lead.Steps)),
		zap.String("state_from", rootName), zap.Int("batch_per_rank", c.ring.batch), zap.Duration("took", c.now.Sub(r.began)))
}

// restartFromDisk forms ring next, of workers that hold no state, from the
// job's state file: the last epoch rank 0 saved (its first epoch when none
// was saved). What trained since is lost and trained again: its partial
// epoch, and any epoch judged whose state never reached the disk (its row
// goes, so that it is written once).
func (c *core) restartFromDisk(r *reformation, next []string) {
	epoch := c.resumedAt // the job's start: its --resume state, or nothing
	st, err := c.cfg.ReadState()
	// The file is this job's if the job started from it, or if an epoch was
	// judged here (rank 0 saves each epoch's state before it reports): not
	// one an earlier job left in --out. Rank 0 may have saved one epoch past
	// the last verdict.
	ours := c.cfg.Plan.Settings.GetResume() == c.cfg.StatePath || len(c.verdicts) > 0
	switch {
	case err == nil && ours && st.Epoch >= c.resumedAt && st.Epoch <= c.recorded()+1:
		epoch = st.Epoch
		c.cfg.Plan.Settings.Resume = c.cfg.StatePath // the plans carry it: every rank loads it
		c.summary.bestAcc = st.BestAcc
		if st.Epoch > c.recorded() {
			// Saved, but its verdict never came: its row is written with what
			// the state tells once the new ring is past it.
			c.lostRow = c.guessRow(st, math.NaN(), c.ring.world())
		}
	case !ours:
		// No epoch ended: the job starts again from where it started.
	case err == nil:
		c.fail(fmt.Errorf("coordinator: %s; no worker of the ring is left to carry its state, and %s holds epoch %d, not one of this job's (%d to %d)",
			r.reason, c.cfg.StatePath, st.Epoch, c.resumedAt, c.recorded()+1))
		return
	default:
		// Without the file (on rank 0's machine but not this one, say), going
		// on would lose the epochs trained.
		c.fail(fmt.Errorf("coordinator: %s; no worker of the ring is left to carry its state, and this coordinator cannot read it: %w", r.reason, err))
		return
	}
	if epoch >= c.cfg.Epochs {
		// The last epoch's state is saved: the job is done.
		c.recordLost()
		c.finished = true
		c.do(endJob{})
		return
	}
	c.forgetAfter(epoch)
	clear(c.joiners)
	clear(c.leftOut)
	old := c.ring
	c.formRing(next, epoch, "")
	c.log.Warn("ring re-formed from the state on disk", zap.String("why", "no worker of the broken ring was left"), zap.Int("generation", c.ring.gen), zap.Int("world", c.ring.world()),
		zap.Int("was", old.world()), zap.Strings("members", c.ring.members), zap.String("state", c.cfg.Plan.Settings.GetResume()), zap.Int("epoch", epoch+1),
		zap.Int("batch_per_rank", c.ring.batch), zap.Duration("took", c.now.Sub(r.began)))
}

// forgetAfter forgets what the job did past its first epochs, which a
// ring started from the state on disk trains again: their verdicts, reports
// and partial trainings, and their rows (metrics.csv rewritten).
func (c *core) forgetAfter(epoch int) {
	for e := range c.verdicts {
		if e > epoch {
			delete(c.verdicts, e)
		}
	}
	for e := range c.prior {
		if e >= epoch {
			delete(c.prior, e)
		}
	}
	clear(c.reports)
	if c.recorded() > epoch {
		for len(c.curves) > 0 && c.curves[len(c.curves)-1].Epoch > epoch {
			c.curves = c.curves[:len(c.curves)-1]
		}
		c.do(writeRows{rows: slices.Clone(c.curves)})
	}
	if c.summary.bestEpoch > epoch {
		c.summary.bestEpoch = 0
		for _, row := range c.curves {
			if row.ValAccuracy == c.summary.bestAcc && c.summary.bestEpoch == 0 {
				c.summary.bestEpoch = row.Epoch
			}
		}
	}
}

// linksAfter are the failed links once the reports of re-formation r are
// weighed (those known before and those they show), and the links they only
// suspect. A link to a worker that registered again since the ring formed (a
// restarted process) says nothing of the new one.
func (c *core) linksAfter(r *reformation) (failed, suspect map[link]bool) {
	renewed := func(name string) bool {
		w := c.workers[name]
		return c.joiners[name] || w == nil || w.RingAddr != c.ring.peers[c.ring.ranks[name]]
	}
	failed, suspect = maps.Clone(c.failedLinks), map[link]bool{}
	f, s := brokenLinks(c.ring.members, r.requests)
	for _, l := range f {
		if !renewed(l.from) && !renewed(l.to) {
			failed[l] = true
		}
	}
	for _, l := range s {
		suspect[l] = true
	}
	return failed, suspect
}

// noteLinks makes failed the job's failed links, logging the new ones and
// the suspected, which the ring now formed avoided if it could.
func (c *core) noteLinks(failed, suspect map[link]bool, r *reformation) {
	for _, l := range linksOf(failed, nil) {
		if !c.failedLinks[l] {
			c.log.Warn("link failed: no later ring uses it", zap.Stringer("link", l), zap.Int("generation", r.gen))
		}
	}
	if len(suspect) > 0 {
		c.log.Warn("some link of the ring failed, the reports do not tell which: the next ring avoids those suspected if it can",
			zap.Int("generation", r.gen), zap.Stringers("suspected", linksOf(suspect, nil)))
	}
	c.failedLinks = failed
	c.metrics.linksFailed(len(failed))
}

// forgetLinks drops the failed links of name: a new process registered under
// it.
func (c *core) forgetLinks(name string) {
	for l := range c.failedLinks {
		if l.from == name || l.to == name {
			delete(c.failedLinks, l)
		}
	}
	c.metrics.linksFailed(len(c.failedLinks))
}

// linksOf are the links of set that touch names (all of them when names is
// nil), sorted.
func linksOf(set map[link]bool, names []string) []link {
	touch := map[string]bool{}
	for _, n := range names {
		touch[n] = true
	}
	var out []link
	for l := range set {
		if names == nil || touch[l.from] || touch[l.to] {
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

func joinLinks(ls []link) string {
	s := make([]string, len(ls))
	for i, l := range ls {
		s[i] = l.String()
	}
	return strings.Join(s, ", ")
}

// reformCall takes a survivor's request for its place in the next ring: it
// waits for that ring (or, asking late, gets its plan at once).
func (c *core) reformCall(e evReform) {
	req := e.req
	if req.JobId != c.cfg.JobID {
		c.reply(e.call, nil, refuse(codes.PermissionDenied, "worker %s belongs to job %q; this coordinator runs job %q", req.Name, req.JobId, c.cfg.JobID))
		return
	}
	if c.failed != nil {
		c.reply(e.call, nil, refuse(codes.Aborted, "%s", c.failed.Error()))
		return
	}
	if int(req.Generation) < c.ring.gen {
		// The ring was re-formed while this worker was not looking.
		if p := c.plans[req.Name]; p != nil {
			c.reply(e.call, p, nil)
			return
		}
		why := "it was left out when the ring re-formed"
		if c.leftOut[req.Name] != "" {
			why += ": " + c.leftOut[req.Name]
		}
		c.reply(e.call, nil, refuse(codes.FailedPrecondition, "worker %s is not in ring %d of job %s: %s", req.Name, c.ring.gen, c.cfg.JobID, why))
		return
	}
	if _, ok := c.ring.ranks[req.Name]; !ok || int(req.Generation) != c.ring.gen {
		c.reply(e.call, nil, refuse(codes.FailedPrecondition, "worker %s asks to re-form ring %d, but ring %d of job %s does not hold it", req.Name, req.Generation, c.ring.gen, c.cfg.JobID))
		return
	}
	c.beginReform(fmt.Sprintf("rank %d (%s): %s", c.ring.ranks[req.Name], req.Name, req.Reason))
	r := c.reform
	if r == nil {
		c.reply(e.call, nil, refuse(codes.FailedPrecondition, "job %s is over", c.cfg.JobID))
		return
	}
	r.requests[req.Name] = req
	if lost := int(req.LostRank); lost >= 0 && lost < c.ring.world() && c.ring.members[lost] != req.Name {
		if name := c.ring.members[lost]; !r.blamed[name] {
			r.blamed[name] = true
			c.do(armTimer{t: timer{kind: timerBlame, gen: r.gen}, at: r.began.Add(blameGrace)})
		}
	}
	c.log.Info("survivor reporting", zap.String("worker", req.Name), zap.Int("epoch", int(req.Epoch)+1), zap.Int("steps", int(req.Steps)), zap.String("reason", req.Reason))
	c.hold(e.call, &pendingCall{kind: callReform, name: req.Name, gen: int(req.Generation)})
	c.completeReform()
}

// join registers a worker after the job started: it enters the ring at the
// next epoch boundary (or at once when a re-formation is waiting for workers),
// taking the current parameters and Adam state from the ring. A name that is
// in the ring and alive at the same address is refused; a member's name at a
// new address is that member restarted, and replaces it.
func (c *core) join(e evRegister) {
	req := e.req
	if c.finished || c.failed != nil {
		c.reply(e.call, nil, refuse(codes.FailedPrecondition, "job %s is over; %s cannot join it", c.cfg.JobID, req.Name))
		return
	}
	_, member := c.ring.ranks[req.Name]
	if member && c.alive[req.Name] && c.workers[req.Name].RingAddr != req.RingAddr {
		// The same name at a new address is a restarted worker (a Kubernetes
		// pod keeps its name): its old process is gone, whatever the gossip
		// says yet.
		c.log.Warn("worker came back at a new address; its old process is gone", zap.String("name", req.Name),
			zap.String("was", c.workers[req.Name].RingAddr), zap.String("now", req.RingAddr))
		c.alive[req.Name] = false
		c.metrics.workerLost()
		c.beginReform(fmt.Sprintf("worker %s (rank %d) restarted", req.Name, c.ring.ranks[req.Name]))
	} else if (member && c.alive[req.Name]) || c.joiners[req.Name] {
		c.reply(e.call, nil, refuse(codes.AlreadyExists, "a worker named %s is already in job %s", req.Name, c.cfg.JobID))
		return
	}
	c.workers[req.Name] = req
	c.joiners[req.Name] = true
	c.alive[req.Name] = true
	c.forgetLinks(req.Name)
	c.log.Info("worker joining; it enters at the next epoch boundary", zap.String("name", req.Name), zap.String("ring_addr", req.RingAddr))
	// The ring it waits for is the one after this: noted before
	// completeReform, which forms it at once when this registration was all
	// a re-formation waited for.
	c.hold(e.call, &pendingCall{kind: callJoin, name: req.Name, gen: c.ring.gen})
	c.completeReform() // a re-formation short of workers may be waiting for it
}

// A link is one direction between two workers. A ring only sends from each
// rank to the next, so a ring can avoid a link that failed one way and still
// keep both ends.
type link struct{ from, to string }

func (l link) String() string { return l.from + "->" + l.to }

// observation is what one survivor saw of its own two links when its ring
// broke: the neighbour (by rank) it heard nothing from (in) or could not
// send to.
type observation struct {
	peer int
	in   bool
}

// observe reads a survivor's report: rank is its rank in the broken ring of
// world ranks, lost the rank it names (ReformRequest.LostRank), reason its
// error. A loss relayed from the predecessor (an abort frame: "reported by
// rank") is another rank's observation; the gossip's verdict on a member
// ("left the cluster") is not about a link; and a lost rank that is no
// neighbour names no link of the reporter's.
func observe(world, rank, lost int, reason string) (observation, bool) {
	if world < 2 || rank < 0 || rank >= world || lost < 0 || lost >= world || lost == rank ||
		strings.Contains(reason, "reported by rank") || strings.Contains(reason, "left the cluster") {
		return observation{}, false
	}
	succ, pred := (rank+1)%world, (rank+world-1)%world
	if lost != succ && lost != pred {
		return observation{}, false
	}
	o := observation{peer: lost, in: lost == pred}
	if world == 2 { // next and prev are the same peer: the reason says which way
		o.in = !strings.Contains(reason, "send to") && !strings.Contains(reason, "stopped taking data") && !strings.Contains(reason, "connect to")
	}
	return o, true
}

// brokenLinks reads the reports of a broken ring's survivors (ring: its
// members by rank; reports: by name, of those that asked) and returns the
// links they show failed, and those they only suspect.
//
// A rank sees only its own two links, and a ring cascades: once one hop is
// silent, every rank after it starves in turn and, at the collective's
// deadline, blames its predecessor. So an observation of a peer is weighed
// with what that peer saw of its other neighbour, and so on up the ring: a
// trail that ends at a member that did not ask (gone, or cut off from the
// coordinator too) explains the silence, and shows no link; one that ends at
// a rank that saw nothing wrong, or only with the one before it, is a broken
// link; one that comes round to the start (everyone blamed the one before)
// says that some link of the ring failed but not which: each hop blamed is
// only suspected, for the next ring, which avoids them if it can.
//
// A failed link is failed both ways: a TCP stream that went silent, or a
// connection that could not be made, lost packets one way or the other (data
// or acknowledgements), and a connection the other way needs the same path
// in both directions (a blackhole route from a to b stops b's connections to
// a too). A suspected hop keeps its direction.
func brokenLinks(ring []string, reports map[string]*controlpb.ReformRequest) (failed, suspect []link) {
	w := len(ring)
	obs := map[int]observation{}
	for r, name := range ring {
		if req := reports[name]; req != nil {
			if o, ok := observe(w, r, int(req.LostRank), req.Reason); ok {
				obs[r] = o
			}
		}
	}
	asked := func(r int) bool { return reports[ring[r]] != nil }
	for r := range ring {
		o, ok := obs[r]
		if !ok || !asked(o.peer) {
			continue // the peer is out of the next ring anyway
		}
		hop := link{ring[r], ring[o.peer]}
		if o.in {
			hop = link{ring[o.peer], ring[r]}
		}
		prev, cur, seen := r, o.peer, map[int]bool{r: true}
		explained, cycle := false, false
		for {
			next, ok := obs[cur]
			if !ok || next.peer == prev {
				break
			}
			if !asked(next.peer) {
				explained = true
				break
			}
			seen[cur] = true
			prev, cur = cur, next.peer
			if seen[cur] {
				cycle = true
				break
			}
		}
		switch {
		case explained:
		case cycle:
			suspect = append(suspect, hop)
		default:
			failed = append(failed, hop, link{hop.to, hop.from})
		}
	}
	return failed, suspect
}

// chooseBudget bounds chooseRing's search (orders tried; a variable for
// tests): the worlds are small, but a large one with many failed links must
// not stall the job.
var chooseBudget = 200_000

// chooseRing orders members (in order of preference: sorted names) into a
// ring that uses no failed link, leaving out as few members as it must, and
// of those rings the one that uses the fewest suspected links. Among equals
// it keeps the members earliest in the list, in the order earliest in the
// list, so that with nothing failed or suspected the ring is the list itself.
// It returns the ring by rank; a ring of one uses no link. Past chooseBudget
// it keeps only the members that touch no failed link.
func chooseRing(members []string, failed, suspect map[link]bool) []string {
	n := len(members)
	if n == 0 {
		return nil
	}
	s := ringSearch{members: members, failed: failed, suspect: suspect, budget: chooseBudget}
	for k := n; k >= 2; k-- {
		subset := make([]int, k) // subsets of k, in lexicographic order
		for i := range subset {
			subset[i] = i
		}
		var best []int
		bestCost := -1
		for {
			if order, cost := s.bestOrder(subset); order != nil && (best == nil || cost < bestCost) {
				best, bestCost = order, cost
				if cost == 0 {
					break
				}
			}
			if s.budget <= 0 {
				return untouched(members, failed)
			}
			if !nextSubset(subset, n) {
				break
			}
		}
		if best != nil {
			ring := make([]string, k)
			for r, i := range best {
				ring[r] = members[i]
			}
			return ring
		}
	}
	return members[:1]
}

type ringSearch struct {
	members         []string
	failed, suspect map[link]bool
	budget          int
}

// bestOrder finds the order of subset (from its first member, trying the
// others in list order) whose every hop r -> r+1, the last back to the first
// included, avoids the failed links, using the fewest suspected ones; nil if
// none (or the budget ran out).
func (s *ringSearch) bestOrder(subset []int) (best []int, bestCost int) {
	order := []int{subset[0]}
	used := map[int]bool{subset[0]: true}
	hop := func(i, j int) (ok bool, cost int) {
		l := link{s.members[i], s.members[j]}
		if s.failed[l] {
			return false, 0
		}
		if s.suspect[l] {
			return true, 1
		}
		return true, 0
	}
	var extend func(cost int) bool // true: stop, a ring of cost 0 is found
	extend = func(cost int) bool {
		if s.budget--; s.budget < 0 || (best != nil && cost >= bestCost) {
			return s.budget < 0
		}
		last := order[len(order)-1]
		if len(order) == len(subset) {
			if ok, c := hop(last, order[0]); ok && (best == nil || cost+c < bestCost) {
				best, bestCost = append([]int(nil), order...), cost+c
			}
			return best != nil && bestCost == 0
		}
		for _, next := range subset[1:] {
			if used[next] {
				continue
			}
			ok, c := hop(last, next)
			if !ok {
				continue
			}
			order, used[next] = append(order, next), true
			stop := extend(cost + c)
			order, used[next] = order[:len(order)-1], false
			if stop {
				return true
			}
		}
		return false
	}
	extend(0)
	if s.budget < 0 {
		return nil, 0
	}
	return best, bestCost
}

// nextSubset moves subset (increasing indices below n) to the next subset of
// its size in lexicographic order; false after the last.
func nextSubset(subset []int, n int) bool {
	k := len(subset)
	for i := k - 1; i >= 0; i-- {
		if subset[i] < n-k+i {
			subset[i]++
			for j := i + 1; j < k; j++ {
				subset[j] = subset[j-1] + 1
			}
			return true
		}
	}
	return false
}

// untouched is chooseRing's way out of a search too large: the members that
// touch no failed link (any order of them works), else the first member.
func untouched(members []string, failed map[link]bool) []string {
	bad := map[string]bool{}
	for l := range failed {
		bad[l.from], bad[l.to] = true, true
	}
	var ring []string
	for _, m := range members {
		if !bad[m] {
			ring = append(ring, m)
		}
	}
	if len(ring) == 0 {
		ring = members[:1]
	}
	return ring
}
