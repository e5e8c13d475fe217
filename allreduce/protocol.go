package allreduce

import (
	"errors"
	"fmt"

	"github.com/alexring/alexring/allreduce/ringpb"
)

// The ring's protocol without I/O: what one rank of one collective must
// receive, in order, what it may send once enough has arrived, whether a
// frame is the one it waits for, when the collective is done, and whom to
// tell when the ring breaks. The ring (ring.go) moves frames between this and
// its transport; the tests drive it with frames alone (protocol_test.go).

// recvChunk is a chunk a rank waits for: it lands in the values [lo, hi) of
// the vector, added (reduce) or copied.
type recvChunk struct {
	step, index uint32
	lo, hi      int
	reduce      bool
	last        bool // the last reduce-scatter step: these values are final
}

// sendChunk is a chunk a rank sends, the values [lo, hi), once after chunks
// have been received (what it sends at step t is what it received at t-1).
type sendChunk struct {
	step, index uint32
	lo, hi      int
	after       int
}

// collective is one collective at one rank: its identity on the wire (ring
// id, sequence number, kind, half floats), its plan, and how far it got.
type collective struct {
	name   string // "all-reduce #3", for errors
	ringID string
	seq    uint64
	kind   uint32
	fp16   bool
	pred   int // the rank whose frames it receives
	recvs  []recvChunk
	sends  []sendChunk
	got    int // chunks received so far
}

// newCollective plans collective p (of n values, per values a chunk) at rank
// of a ring of world >= 2.
func newCollective(ringID string, rank, world int, p *Pending, per int) *collective {
	c := &collective{name: p.name(), ringID: ringID, seq: p.seq, kind: p.kind, fp16: p.fp16, pred: (rank + world - 1) % world}
	if p.kind == kindBroadcast {
		c.recvs, c.sends = planBroadcast(rank, world, p.root, len(p.v), per)
	} else {
		c.recvs, c.sends = planAllReduce(rank, world, len(p.v), per)
	}
	return c
}

// planAllReduce is rank's reduce-scatter and all-gather (schedule.go), chunk
// by chunk: chunk c of step t > 0 leaves once chunk c of step t-1 arrived.
func planAllReduce(rank, world, n, per int) ([]recvChunk, []sendChunk) {
	var recvs []recvChunk
	var sends []sendChunk
	prev := 0 // the index in recvs of step t-1's first chunk
	for t, st := range allReduceSteps(rank, world) {
		lo, hi := segment(n, world, st.send)
		for c := range chunks(hi-lo, per) {
			a, b := chunkRange(lo, hi, per, c)
			after := 0
			if t > 0 {
				after = prev + c + 1
			}
			sends = append(sends, sendChunk{step: uint32(t), index: uint32(c), lo: a, hi: b, after: after})
		}
		prev = len(recvs)
		lo, hi = segment(n, world, st.recv)
		for c := range chunks(hi-lo, per) {
			a, b := chunkRange(lo, hi, per, c)
			recvs = append(recvs, recvChunk{step: uint32(t), index: uint32(c), lo: a, hi: b, reduce: st.reduce, last: st.last})
		}
	}
	return recvs, sends
}

// planBroadcast pipes root's vector around the ring chunk by chunk: each
// rank but the root copies a chunk in, and passes it on unless its successor
// is the root.
func planBroadcast(rank, world, root, n, per int) ([]recvChunk, []sendChunk) {
	var recvs []recvChunk
	var sends []sendChunk
	forward := (rank+1)%world != root
	for c := range chunks(n, per) {
		a, b := chunkRange(0, n, per, c)
		after := 0
		if rank != root {
			recvs = append(recvs, recvChunk{index: uint32(c), lo: a, hi: b})
			after = c + 1
		}
		if forward {
			sends = append(sends, sendChunk{index: uint32(c), lo: a, hi: b, after: after})
		}
	}
	return recvs, sends
}

// done says whether every chunk has arrived (the sends are the caller's).
func (c *collective) done() bool { return c.got == len(c.recvs) }

// step takes the next frame from the predecessor, whose chunk payload is
// size bytes: the chunk it is, or why it is refused (an abort, a frame of
// another ring, collective, kind or place in the order, a wrong size), as a
// PeerError naming the rank at fault. It is called only until done: a frame
// after the last chunk belongs to the next collective, which checks it.
func (c *collective) step(f *ringpb.Frame, size int) (recvChunk, error) {
	if ab := f.GetAbort(); ab != nil {
		return recvChunk{}, &PeerError{Rank: int(ab.LostRank), Collective: c.name, Err: &relayedAbort{from: c.pred, reason: ab.Reason}}
	}
	want := c.recvs[c.got]
	ch := f.GetChunk()
	switch {
	case ch == nil:
		return recvChunk{}, c.refuse("unexpected frame %s, want a chunk", describe(f))
	case ch.RingId != c.ringID:
		return recvChunk{}, c.refuse("unexpected frame %s: another ring's (a job's or a membership's before this one), want ring %q", describe(f), c.ringID)
	case ch.Seq < c.seq:
		return recvChunk{}, c.refuse("unexpected frame %s: stale (an earlier collective's), want seq %d", describe(f), c.seq)
	case ch.Seq > c.seq:
		return recvChunk{}, c.refuse("unexpected frame %s: a later collective's, want seq %d", describe(f), c.seq)
	case ch.Kind != c.kind || ch.Fp16 != c.fp16:
		return recvChunk{}, c.refuse("unexpected frame %s fp16 %v, want kind %d fp16 %v: do the ranks run the same collectives in the same order?", describe(f), ch.Fp16, c.kind, c.fp16)
	case ch.Step != want.step || ch.Index != want.index:
		return recvChunk{}, c.refuse("unexpected frame %s: out of order, lost or duplicated, want step %d chunk %d", describe(f), want.step, want.index)
	}
	if w := c.width() * (want.hi - want.lo); size != w {
		return recvChunk{}, c.refuse("chunk of %d bytes, want %d: do the ranks reduce vectors of different lengths?", size, w)
	}
	c.got++
	return want, nil
}

// relayedAbort is a failure another rank reported (its abort), not one of
// this rank's own links.
type relayedAbort struct {
	from   int
	reason string
}

func (e *relayedAbort) Error() string {
	return fmt.Sprintf("reported by rank %d: %s", e.from, e.reason)
}

func (c *collective) refuse(format string, args ...any) error {
	return &PeerError{Rank: c.pred, Collective: c.name, Err: fmt.Errorf(format, args...)}
}

// width is the bytes of one value on the wire.
func (c *collective) width() int {
	if c.fp16 {
		return 2
	}
	return 4
}

func describe(f *ringpb.Frame) string {
	if c := f.GetChunk(); c != nil {
		return fmt.Sprintf("ring %q seq %d kind %d step %d chunk %d", c.RingId, c.Seq, c.Kind, c.Step, c.Index)
	}
	return fmt.Sprintf("%T", f.GetBody())
}

// abortFor is what a rank whose ring broke with err tells its successor
// succ, so that the ranks after it fail at once naming the same rank rather
// than time out; nil when succ is the rank named. That one is not told: gone,
// it would not hear it, and a send to a host that vanished with a full window
// blocks for the abort's grace; alive, it fails on its own (its stream breaks
// or its deadline passes) naming its own predecessor, which is what the
// coordinator's diagnosis of links needs, not another rank's report.
func abortFor(err error, succ int) *ringpb.Abort {
	lost := int32(-1)
	var pe *PeerError
	if errors.As(err, &pe) {
		lost = int32(pe.Rank)
	}
	if lost == int32(succ) {
		return nil
	}
	return &ringpb.Abort{LostRank: lost, Reason: err.Error()}
}
