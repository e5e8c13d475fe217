package allreduce

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/alexring/alexring/allreduce/ringpb"
)

// The schedule's pure functions: segments and chunks tile the vector, what a
// rank sends at step t is what it received at t-1, each reduce-scatter step
// is a permutation of the segments over the ranks, and every rank ends
// having received every segment but the one it finished.
func TestSchedule(t *testing.T) {
	for world := 1; world <= 8; world++ {
		for _, n := range []int{0, 1, world - 1, world, 1000} {
			next := 0
			for k := range world {
				lo, hi := segment(n, world, k)
				if lo != next || hi < lo || hi-lo > n/world+1 {
					t.Fatalf("world %d n %d: segment %d is [%d, %d) after %d", world, n, k, lo, hi, next)
				}
				at := lo
				for c := range chunks(hi-lo, 3) {
					a, b := chunkRange(lo, hi, 3, c)
					if a != at || b <= a || b-a > 3 {
						t.Fatalf("segment [%d, %d): chunk %d is [%d, %d)", lo, hi, c, a, b)
					}
					at = b
				}
				if at != hi {
					t.Fatalf("segment [%d, %d): chunks end at %d", lo, hi, at)
				}
				next = hi
			}
			if next != n {
				t.Fatalf("world %d n %d: segments end at %d", world, n, next)
			}
		}
		steps := make([][]ringStep, world)
		for r := range world {
			steps[r] = allReduceSteps(r, world)
			if len(steps[r]) != 2*(world-1) {
				t.Fatalf("world %d rank %d: %d steps", world, r, len(steps[r]))
			}
			var got []int
			for i, st := range steps[r] {
				if i > 0 && st.send != steps[r][i-1].recv {
					t.Errorf("world %d rank %d step %d sends segment %d, but received %d", world, r, i, st.send, steps[r][i-1].recv)
				}
				if st.reduce != (i < world-1) || st.last != (i == world-2) {
					t.Errorf("world %d rank %d step %d: reduce %v last %v", world, r, i, st.reduce, st.last)
				}
				if !st.reduce {
					got = append(got, st.recv)
				}
			}
			if world > 1 {
				owned := steps[r][world-2].recv
				if owned != (r+1)%world {
					t.Errorf("world %d rank %d finishes segment %d, want %d", world, r, owned, (r+1)%world)
				}
				got = append(got, owned)
				slices.Sort(got)
				for k := range world {
					if got[k] != k {
						t.Errorf("world %d rank %d ends with segments %v", world, r, got)
						break
					}
				}
			}
		}
		for s := 0; s < 2*(world-1); s++ {
			seen := map[int]int{}
			for r := range world {
				seen[steps[r][s].recv]++
				// What rank r sends at step s, its successor receives.
				if steps[(r+1)%world][s].recv != steps[r][s].send {
					t.Errorf("world %d step %d: rank %d sends %d, its successor receives %d", world, s, r, steps[r][s].send, steps[(r+1)%world][s].recv)
				}
			}
			if len(seen) != world {
				t.Errorf("world %d step %d: ranks receive segments %v, want each once", world, s, seen)
			}
		}
	}
}

// simulate runs one collective's plans at every rank with no I/O and no
// goroutines: round after round, each rank sends what its plan allows into
// its successor's queue and takes in what its queue holds, through
// collective.step, until every plan is done (or nothing moves: a deadlock).
func simulate(t *testing.T, vs [][]float32, p Pending, per int) {
	t.Helper()
	world := len(vs)
	cs := make([]*collective, world)
	sent := make([]int, world)
	queues := make([][]*ringpb.Frame, world)
	for r := range world {
		q := p
		q.v = vs[r]
		cs[r] = newCollective("sim", r, world, &q, per)
	}
	for {
		moved := false
		for r, c := range cs {
			for sent[r] < len(c.sends) && c.sends[sent[r]].after <= c.got {
				s := c.sends[sent[r]]
				data := slices.Clone(leBytes32(vs[r][s.lo:s.hi]))
				succ := (r + 1) % world
				queues[succ] = append(queues[succ], &ringpb.Frame{Body: &ringpb.Frame_Chunk{Chunk: &ringpb.Chunk{
					RingId: "sim", Seq: p.seq, Kind: p.kind, Step: s.step, Index: s.index, Data: data}}})
				sent[r]++
				moved = true
			}
			for len(queues[r]) > 0 {
				f := queues[r][0]
				queues[r] = queues[r][1:]
				ch, err := c.step(f, len(f.GetChunk().Data))
				if err != nil {
					t.Fatalf("rank %d: %v", r, err)
				}
				accumulate(vs[r][ch.lo:ch.hi], [][]byte{f.GetChunk().Data}, 4, ch.reduce)
				if ch.last {
					finish(vs[r][ch.lo:ch.hi], p.op, world, false)
				}
				moved = true
			}
		}
		if !moved {
			break
		}
	}
	for r, c := range cs {
		if !c.done() || sent[r] != len(c.sends) {
			t.Fatalf("rank %d stuck: %d of %d chunks in, %d of %d sent", r, c.got, len(c.recvs), sent[r], len(c.sends))
		}
	}
}

// The protocol alone, driven by frames, reduces and broadcasts exactly.
func TestProtocolWithoutIO(t *testing.T) {
	for world := 2; world <= 8; world++ {
		for _, n := range []int{1, world + 1, 97} {
			vs := randomVectors(world, n, uint64(n))
			want := ringOrderSum(vs, Avg, false)
			simulate(t, vs, Pending{kind: kindAllReduce, op: Avg, seq: 1}, 5)
			checkEqualBits(t, vs, want, "simulated all-reduce")
			root := n % world
			vs = randomVectors(world, n, uint64(n))
			want = slices.Clone(vs[root])
			simulate(t, vs, Pending{kind: kindBroadcast, root: root, seq: 2}, 5)
			checkEqualBits(t, vs, want, "simulated broadcast")
		}
	}
}

// Every refusal names the predecessor, says why, and leaves the collective
// where it was; an abort names the rank it reports.
func TestProtocolRefusesFrames(t *testing.T) {
	p := &Pending{kind: kindAllReduce, seq: 5, v: make([]float32, 40)}
	chunk := func(edit func(*ringpb.Chunk)) *ringpb.Frame {
		c := &ringpb.Chunk{RingId: "r", Seq: 5, Kind: kindAllReduce}
		if edit != nil {
			edit(c)
		}
		return &ringpb.Frame{Body: &ringpb.Frame_Chunk{Chunk: c}}
	}
	for _, c := range []struct {
		name  string
		frame *ringpb.Frame
		size  int
		rank  int
		want  string
	}{
		{"foreign", chunk(func(c *ringpb.Chunk) { c.RingId = "other" }), 40, 1, `ring "other" seq 5`},
		{"foreign", chunk(func(c *ringpb.Chunk) { c.RingId = "other" }), 40, 1, "another ring's"},
		{"stale", chunk(func(c *ringpb.Chunk) { c.Seq = 4 }), 40, 1, "stale (an earlier collective's), want seq 5"},
		{"later", chunk(func(c *ringpb.Chunk) { c.Seq = 6 }), 40, 1, "a later collective's"},
		{"kind", chunk(func(c *ringpb.Chunk) { c.Kind = kindBroadcast }), 40, 1, "same collectives in the same order"},
		{"fp16", chunk(func(c *ringpb.Chunk) { c.Fp16 = true }), 20, 1, "fp16 true"},
		{"order", chunk(func(c *ringpb.Chunk) { c.Index = 1 }), 40, 1, "out of order, lost or duplicated, want step 0 chunk 0"},
		{"size", chunk(nil), 36, 1, "chunk of 36 bytes, want 40"},
		{"hello", &ringpb.Frame{Body: &ringpb.Frame_Hello{Hello: &ringpb.Hello{}}}, 0, 1, "want a chunk"},
		{"abort", &ringpb.Frame{Body: &ringpb.Frame_Abort{Abort: &ringpb.Abort{LostRank: 3, Reason: "gone"}}}, 0, 3, "reported by rank 1: gone"},
	} {
		col := newCollective("r", 2, 4, p, 10)
		_, err := col.step(c.frame, c.size)
		var pe *PeerError
		if !errors.As(err, &pe) || pe.Rank != c.rank || !errors.Is(err, ErrPeerLost) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "all-reduce #5") {
			t.Errorf("%s: %v, want rank %d named and %q", c.name, err, c.rank, c.want)
		}
		if col.got != 0 {
			t.Errorf("%s: the refused frame counted", c.name)
		}
	}
	// The right frame is taken; the same again is refused as a duplicate.
	col := newCollective("r", 2, 4, p, 10)
	ch, err := col.step(chunk(nil), 40)
	if err != nil || ch.lo != 10 || ch.hi != 20 || !ch.reduce {
		t.Fatalf("the expected chunk: %+v, %v", ch, err)
	}
	if _, err := col.step(chunk(nil), 40); err == nil || !strings.Contains(err.Error(), "duplicated") {
		t.Errorf("a duplicate: %v", err)
	}
	// Done once every planned chunk is in, not before.
	col = newCollective("r", 0, 2, &Pending{kind: kindBarrier, seq: 1, v: make([]float32, 1)}, 10)
	for range col.recvs {
		if col.done() {
			t.Fatalf("done after %d of %d chunks", col.got, len(col.recvs))
		}
		want := col.recvs[col.got]
		if _, err := col.step(chunk(func(c *ringpb.Chunk) { c.Seq, c.Kind, c.Step, c.Index = 1, kindBarrier, want.step, want.index }), 4); err != nil {
			t.Fatal(err)
		}
	}
	if !col.done() {
		t.Errorf("not done after all %d chunks", len(col.recvs))
	}
}

func TestAbortFor(t *testing.T) {
	a := abortFor(&PeerError{Rank: 3, Collective: "all-reduce #1", Err: errors.New("stream broke")}, 1)
	if a == nil || a.LostRank != 3 || !strings.Contains(a.Reason, "stream broke") {
		t.Errorf("abort %v", a)
	}
	if a := abortFor(errors.New("context canceled"), 1); a == nil || a.LostRank != -1 {
		t.Errorf("an error naming no rank: abort %v", a)
	}
	// The successor named lost is not told.
	if a := abortFor(&PeerError{Rank: 1, Collective: "all-reduce #1", Err: errors.New("send to b: reset")}, 1); a != nil {
		t.Errorf("an error naming the successor: abort %v, want none", a)
	}
}

// ringOrderSum is the all-reduce of vs as the ring computes it, in float32:
// segment k summed starting from rank k's values, adding each next rank's in
// ring order, the partial sums rounded to half floats on each hop with fp16;
// then divided for a mean and, with fp16, rounded once more.
func ringOrderSum(vs [][]float32, op Op, fp16 bool) []float32 {
	world, n := len(vs), len(vs[0])
	out := slices.Clone(vs[0])
	if world == 1 {
		return out
	}
	wire := func(x float32) float32 {
		if fp16 {
			return fromHalf(toHalf(x))
		}
		return x
	}
	for k := range world {
		lo, hi := segment(n, world, k)
		for i := lo; i < hi; i++ {
			acc := vs[k][i]
			for j := 1; j < world; j++ {
				acc = vs[(k+j)%world][i] + wire(acc)
			}
			if op == Avg {
				acc /= float32(world)
			}
			out[i] = wire(acc)
		}
	}
	return out
}

// checkEqualBits checks that every rank holds want, bit for bit.
func checkEqualBits(t *testing.T, vs [][]float32, want []float32, what string) {
	t.Helper()
	for r, v := range vs {
		for i := range want {
			if math.Float32bits(v[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s, world %d, %d values: rank %d element %d is %v, want %v", what, len(vs), len(want), r, i, v[i], want[i])
			}
		}
	}
}
