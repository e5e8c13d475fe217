package coordinator

import (
	"fmt"
	"time"

	"go.uber.org/zap"
)

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
// the rest of it, and arms the check that tells it overdue.
func (c *core) epochStarted(epoch int, whole bool) {
	c.endWait()
	c.epochBegan, c.epochWhole = c.now, whole
	if c.lastEpoch > 0 {
		c.after(timer{kind: timerWait, gen: c.ring.gen, epoch: epoch}, c.lastEpoch+max(c.lastEpoch, overdueSlack))
	}
}

// reported notes a report of epoch (by a rank of the current ring) whose
// call gives up at deadline (zero: never).
func (c *core) reported(epoch int, deadline time.Time) {
	w := c.wait
	if w == nil || w.gen != c.ring.gen || w.epoch != epoch {
		w = &epochWait{gen: c.ring.gen, epoch: epoch, since: c.now}
		c.wait = w
	}
	if w.first.IsZero() {
		w.first = c.now
		if c.epochWhole && !w.logged { // an overdue epoch is no measure of the next
			c.lastEpoch = w.first.Sub(c.epochBegan)
		}
		c.after(timer{kind: timerWait, gen: c.ring.gen, epoch: epoch}, max(patience, 2*c.lastSpread))
	}
	if !deadline.IsZero() && (w.giveUp.IsZero() || deadline.Before(w.giveUp)) {
		w.giveUp = deadline
	}
	c.metrics.waitingFor(c.missing(epoch), w.since)
}

// missing are the ranks of the current ring that have not reported epoch.
func (c *core) missing(epoch int) []int {
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
func (c *core) checkWait(gen, epoch int) {
	if c.ring.gen != gen || c.reform != nil || c.finished || c.failed != nil || c.verdicts[epoch] != nil {
		return
	}
	w := c.wait
	if w == nil || w.gen != gen || w.epoch != epoch {
		// Overdue with no report at all: the wait starts now.
		w = &epochWait{gen: gen, epoch: epoch, since: c.now}
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
		zap.Duration("epoch_running", c.now.Sub(c.epochBegan)), zap.Duration("last_epoch_took", c.lastEpoch)}
	if !w.first.IsZero() {
		fields = append(fields, zap.Duration("since_first_report", c.now.Sub(w.first)))
	}
	if w.giveUp.IsZero() {
		// Nothing bounds it here: the ring re-forms once the gossip finds
		// them gone, or the ranks that reported give up on their own.
		fields = append(fields, zap.String("at_most", "until they report or the gossip finds them gone"))
	} else {
		fields = append(fields, zap.Duration("at_most", w.giveUp.Sub(c.now)), zap.String("then", "the ranks that reported stop waiting for this coordinator"))
	}
	c.log.Warn("epoch boundary waiting for workers that have not reported", fields...)
	c.metrics.waitingFor(c.missing(epoch), w.since)
}

// endWait closes the boundary wait, if any: its length goes to the metrics
// (and to the log when the wait was logged).
func (c *core) endWait() {
	w := c.wait
	c.wait = nil
	c.metrics.waitingFor(nil, time.Time{})
	if w == nil {
		return
	}
	if !w.first.IsZero() && !w.logged { // normal boundaries only: a stall is no measure
		c.lastSpread = max(c.lastSpread, c.now.Sub(w.first))
	}
	c.metrics.waited(c.now.Sub(w.since))
	if w.logged {
		c.log.Info("epoch boundary wait over", zap.Int("epoch", w.epoch), zap.Int("generation", w.gen), zap.Duration("waited", c.now.Sub(w.since)))
	}
}
