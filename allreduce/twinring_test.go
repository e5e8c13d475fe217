package allreduce

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alexring/alexring/allreduce/ringpb"
)

// The rings over the in-memory twin: the protocol and the ring's own code,
// without sockets, timers or sleeps. A hang is bounded by the test's context
// and reported as one.

func twinCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eachRing runs fn on every ring at once and returns the errors by rank.
func eachRing(rings []*Ring, fn func(rank int, r *Ring) error) []error {
	c := &cluster{rings: rings}
	return c.each(fn)
}

// World sizes 1 to 8 all-reduce to exactly the reference sum (and mean) in
// the ring's order, float32 and half floats on the wire, with vectors that
// leave segments empty, of one chunk and of many; every rank holds the same
// bits, within float32 rounding of the float64 sum.
func TestTwinAllReduceIsTheReferenceSum(t *testing.T) {
	for world := 1; world <= 8; world++ {
		for _, fp16 := range []bool{false, true} {
			rings := twinRings(t, newTwin(world), func(c *Config) { c.FP16 = fp16 })
			for _, n := range []int{0, 1, world - 1, world + 1, 1003} {
				for _, op := range []Op{Sum, Avg} {
					vs := randomVectors(world, n, uint64(world*n+int(op)))
					if n == 0 {
						vs = make([][]float32, world)
						for r := range vs {
							vs[r] = []float32{}
						}
					} else if n > 0 {
						want := ringOrderSum(vs, op, fp16)
						exact := make([]float64, n)
						for _, v := range vs {
							for i, x := range v {
								exact[i] += float64(x)
							}
						}
						for r, err := range eachRing(rings, func(rank int, r *Ring) error { return r.AllReduce(twinCtx(t), vs[rank], op) }) {
							if err != nil {
								t.Fatalf("world %d n %d: rank %d: %v", world, n, r, err)
							}
						}
						checkEqualBits(t, vs, want, fmt.Sprintf("all-reduce op %d fp16 %v", op, fp16))
						tol := 1e-6 * float64(world)
						if fp16 {
							tol = 4e-3
						}
						for i, x := range exact {
							if op == Avg {
								x /= float64(world)
							}
							if math.Abs(float64(vs[0][i])-x) > tol*math.Max(1, math.Abs(x)) {
								t.Fatalf("world %d n %d: element %d is %v, the float64 sum %v", world, n, i, vs[0][i], x)
							}
						}
						continue
					}
					for r, err := range eachRing(rings, func(rank int, r *Ring) error { return r.AllReduce(twinCtx(t), vs[rank], op) }) {
						if err != nil {
							t.Fatalf("world %d empty: rank %d: %v", world, r, err)
						}
					}
				}
			}
		}
	}
}

// A broadcast from every root copies the root's bits everywhere, half floats
// on the wire or not; a barrier completes.
func TestTwinBroadcastAndBarrier(t *testing.T) {
	for _, world := range []int{2, 3, 5} {
		rings := twinRings(t, newTwin(world), func(c *Config) { c.FP16 = true })
		for root := range world {
			vs := randomVectors(world, 301, uint64(root))
			vs[root][0], vs[root][1] = 1e-30, 70000 // no half float holds these
			want := slices.Clone(vs[root])
			for r, err := range eachRing(rings, func(rank int, r *Ring) error { return r.Broadcast(twinCtx(t), vs[rank], root) }) {
				if err != nil {
					t.Fatalf("world %d root %d: rank %d: %v", world, root, r, err)
				}
			}
			checkEqualBits(t, vs, want, fmt.Sprintf("broadcast from %d", root))
		}
		for r, err := range eachRing(rings, func(rank int, r *Ring) error { return r.Barrier(twinCtx(t)) }) {
			if err != nil {
				t.Fatalf("world %d barrier: rank %d: %v", world, r, err)
			}
		}
	}
}

// wantLost checks that err names rank lost, and is no hang.
func wantLost(t *testing.T, err error, lost int, what string) {
	t.Helper()
	var pe *PeerError
	if errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &pe) || pe.Rank != lost || !errors.Is(err, ErrPeerLost) {
		t.Fatalf("%s: %v, want an error naming rank %d", what, err, lost)
	}
}

// A rank that dies at any point of a collective, before any chunk it sends
// in a reduce-scatter, an all-gather or a broadcast, makes every other rank
// fail naming it: in that collective, or, for a rank that could still finish
// it (with the right values), in the next.
func TestTwinPeerLostAtEveryStep(t *testing.T) {
	const per = 4 // values a chunk: two chunks a segment
	for world := 2; world <= 5; world++ {
		n := 2 * per * world
		for victim := range world {
			for _, kind := range []uint32{kindAllReduce, kindBroadcast} {
				var sends int
				vs := randomVectors(world, n, 11)
				if kind == kindAllReduce {
					_, s := planAllReduce(victim, world, n, per)
					sends = len(s)
				} else {
					_, s := planBroadcast(victim, world, 0, n, per)
					sends = len(s)
				}
				for k := range sends {
					what := fmt.Sprintf("world %d, %s, rank %d lost before its chunk %d of %d", world, kindNames[kind], victim, k, sends)
					tw := newTwin(world)
					tw.setFate(func(from, nth int, c *ringpb.Chunk) fate { return fate{kill: from == victim && nth == k} })
					rings := twinRings(t, tw, func(c *Config) { c.ChunkBytes = 4 * per })
					in := make([][]float32, world)
					for r := range world {
						in[r] = slices.Clone(vs[r])
					}
					var want []float32
					if kind == kindAllReduce {
						want = ringOrderSum(vs, Sum, false)
					} else {
						want = vs[0]
					}
					errs := eachRing(rings, func(rank int, r *Ring) error {
						if kind == kindAllReduce {
							return r.AllReduce(twinCtx(t), in[rank], Sum)
						}
						return r.Broadcast(twinCtx(t), in[rank], 0)
					})
					// The next collective tells those that finished.
					next := eachRing(rings, func(rank int, r *Ring) error {
						if rank == victim || errs[rank] != nil {
							return nil
						}
						if !slices.Equal(in[rank], want) {
							return fmt.Errorf("finished with wrong values")
						}
						return r.Barrier(twinCtx(t))
					})
					for r := range world {
						if r == victim {
							continue
						}
						if errs[r] == nil {
							errs[r] = next[r]
						}
						wantLost(t, errs[r], victim, fmt.Sprintf("%s: rank %d", what, r))
					}
				}
			}
		}
	}
}

// Frames that are not the one expected (another ring's, an earlier or later
// collective's, duplicated, lost, of a wrong size) are refused by the rank
// that gets them, naming its predecessor, and the abort that follows makes
// the ranks after it fail naming the same one, at once. The rank named is
// not told: it fails at its deadline, naming its own predecessor.
func TestTwinRefusesFrames(t *testing.T) {
	const world, per = 3, 4
	header := func(edit func(*ringpb.Chunk)) *ringpb.Frame {
		c := &ringpb.Chunk{RingId: "twin-ring", Seq: 1, Kind: kindAllReduce}
		edit(c)
		return &ringpb.Frame{Body: &ringpb.Frame_Chunk{Chunk: c}}
	}
	good := make([]byte, 4*per)
	for _, c := range []struct {
		name   string
		inject *ringpb.Frame
		data   []byte
		fate   func(from, nth int, c *ringpb.Chunk) fate
		want   string
	}{
		{name: "another ring", inject: header(func(c *ringpb.Chunk) { c.RingId = "old-ring" }), data: good, want: `ring "old-ring"`},
		{name: "stale", inject: header(func(c *ringpb.Chunk) { c.Seq = 0 }), data: good, want: "stale"},
		{name: "later", inject: header(func(c *ringpb.Chunk) { c.Seq = 2 }), data: good, want: "a later collective's"},
		{name: "wrong size", inject: header(func(*ringpb.Chunk) {}), data: good[:4*per-4], want: "chunk of 12 bytes, want 16"},
		{name: "duplicated", fate: func(from, nth int, _ *ringpb.Chunk) fate { return fate{twice: from == 0 && nth == 0} }, want: "want step 0 chunk 1"},
		{name: "dropped", fate: func(from, nth int, _ *ringpb.Chunk) fate { return fate{drop: from == 0 && nth == 0} }, want: "want step 0 chunk 0"},
	} {
		tw := newTwin(world)
		if c.inject != nil {
			tw.inject(1, c.inject, c.data)
		}
		tw.setFate(c.fate)
		rings := twinRings(t, tw, func(cfg *Config) { cfg.ChunkBytes = 4 * per })
		vs := randomVectors(world, 2*per*world, 3)
		pending := make([]*Pending, world)
		for r := range world {
			pending[r] = rings[r].Start(twinCtx(t), vs[r], Sum)
		}
		if err := pending[1].Wait(); !strings.Contains(fmt.Sprint(err), c.want) {
			t.Errorf("%s: rank 1 got %v, want %q", c.name, err, c.want)
		}
		for _, r := range []int{1, 2} {
			wantLost(t, pending[r].Wait(), 0, fmt.Sprintf("%s: rank %d", c.name, r))
		}
		tw.waitSends(0, 1) // rank 0's deadline is armed
		tw.advance(DefaultConfig().OpTimeout)
		err := pending[0].Wait()
		wantLost(t, err, 2, fmt.Sprintf("%s: rank 0, at its deadline", c.name))
		if strings.Contains(err.Error(), "reported by rank") {
			t.Errorf("%s: rank 0 got %v, want its own view, not an abort", c.name, err)
		}
		if n := tw.abortsTo(0); n != 0 {
			t.Errorf("%s: rank 2 sent the rank it names lost %d aborts, want none", c.name, n)
		}
	}
	// A stale frame after a finished collective: the first one's chunk again.
	tw := newTwin(2)
	rings := twinRings(t, tw, nil)
	vs := randomVectors(2, 8, 1)
	for _, err := range eachRing(rings, func(rank int, r *Ring) error { return r.AllReduce(twinCtx(t), vs[rank], Sum) }) {
		if err != nil {
			t.Fatal(err)
		}
	}
	tw.inject(0, header(func(c *ringpb.Chunk) { c.Step, c.Index = 1, 0 }), make([]byte, 16))
	err := rings[0].AllReduce(twinCtx(t), vs[0], Sum)
	if !strings.Contains(fmt.Sprint(err), "stale (an earlier collective's), want seq 2") {
		t.Errorf("a chunk of collective 1 during collective 2: %v", err)
	}
	wantLost(t, err, 1, "stale frame")
}

// Ring.Fail during a collective (the gossip lost a rank) fails it on this
// rank, and the abort makes the ranks after it fail naming the same rank at
// once; the rank named is not told (gone, it would not hear; alive, its own
// view of its links is what the coordinator needs), and fails at its
// deadline naming its predecessor.
func TestTwinFailAbortsInFlight(t *testing.T) {
	tw := newTwin(3)
	sent := make(chan struct{})
	tw.setFate(func(from, nth int, _ *ringpb.Chunk) fate {
		if from == 0 && nth == 0 {
			close(sent)
		}
		return fate{}
	})
	rings := twinRings(t, tw, nil)
	done := make(chan error, 2)
	v := randomVectors(3, 1000, 5)
	// Ranks 0 and 1 start; rank 2 not yet, so the collective cannot end.
	for _, r := range []int{0, 1} {
		go func() { done <- rings[r].AllReduce(twinCtx(t), v[r], Sum) }()
	}
	<-sent
	rings[0].Fail(2, "memberlist: node failed")
	for range 2 {
		wantLost(t, <-done, 2, "a failed ring")
	}
	// Both rings are broken (breakRing ran before Wait returned): rank 1 was
	// told, rank 2 was not.
	if a1, a2 := tw.abortsTo(1), tw.abortsTo(2); a1 != 1 || a2 != 0 {
		t.Errorf("aborts to rank 1: %d, to rank 2: %d; want 1 and 0", a1, a2)
	}
	p := rings[2].Start(twinCtx(t), v[2], Sum)
	tw.waitSends(2, 1) // rank 2's deadline is armed
	tw.advance(DefaultConfig().OpTimeout)
	err := p.Wait()
	wantLost(t, err, 1, "the rank the ring gave up on, at its deadline")
	if !strings.Contains(err.Error(), "nothing from twin-1") {
		t.Errorf("rank 2: %v, want its own view of its predecessor", err)
	}
}

// A late frame holds up its link (in order, as TCP) until the virtual clock
// reaches it; then the collective completes with the same result.
func TestTwinDelayWaitsForTheClock(t *testing.T) {
	tw := newTwin(3)
	held := make(chan struct{})
	tw.setFate(func(from, nth int, _ *ringpb.Chunk) fate {
		if from == 1 && nth == 0 {
			close(held)
			return fate{delay: 5 * time.Millisecond}
		}
		return fate{}
	})
	rings := twinRings(t, tw, nil)
	vs := randomVectors(3, 1000, 4)
	want := ringOrderSum(vs, Avg, false)
	pending := make([]*Pending, 3)
	for r := range 3 {
		pending[r] = rings[r].Start(twinCtx(t), vs[r], Avg)
	}
	<-held
	tw.advance(4 * time.Millisecond)
	// Rank 2 needs rank 1's first chunk before it can finish anything, and
	// the clock is not there yet: the chunk still heads its queue.
	if !tw.heldBack(2) {
		t.Fatal("rank 1's delayed first chunk left the queue before it was due")
	}
	tw.advance(time.Millisecond)
	for r, p := range pending {
		if err := p.Wait(); err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	checkEqualBits(t, vs, want, "delayed all-reduce")
	if q := tw.queued(2); q != 0 {
		t.Errorf("%d frames left on the way to rank 2", q)
	}
}

// A closed ring fails what is queued and later collectives; its neighbours'
// collectives fail naming it.
func TestTwinCloseFailsNeighbours(t *testing.T) {
	rings := twinRings(t, newTwin(3), nil)
	rings[1].Close()
	if err := rings[1].AllReduce(twinCtx(t), make([]float32, 3), Sum); !errors.Is(err, ErrClosed) {
		t.Errorf("the closed ring: %v", err)
	}
	errs := eachRing(rings, func(rank int, r *Ring) error {
		if rank == 1 {
			return nil
		}
		return r.AllReduce(twinCtx(t), make([]float32, 30), Sum)
	})
	for _, r := range []int{0, 2} {
		wantLost(t, errs[r], 1, fmt.Sprintf("rank %d", r))
		wantLost(t, rings[r].Barrier(twinCtx(t)), 1, fmt.Sprintf("rank %d, later", r))
	}
}

// A rank that never joins a collective is named, on the virtual clock, by
// its successor once the deadline passes, and through the abort by the
// ranks after it, whose own deadlines are still to come.
func TestTwinSilentRankTimesOut(t *testing.T) {
	tw := newTwin(3)
	rings := twinRings(t, tw, func(c *Config) { c.OpTimeout = time.Minute })
	vs := randomVectors(3, 100, 6)
	p2 := rings[2].Start(twinCtx(t), vs[2], Sum)
	<-tw.armed // rank 2's deadline: a minute from 0
	tw.advance(time.Second)
	p0 := rings[0].Start(twinCtx(t), vs[0], Sum)
	<-tw.armed // rank 0's: a minute from 1s
	tw.advance(time.Minute - time.Second)
	err := p2.Wait()
	wantLost(t, err, 1, "rank 2, after the silent rank")
	if !strings.Contains(err.Error(), "nothing from twin-1 for 1m0s") {
		t.Errorf("rank 2: %v, want the deadline named", err)
	}
	err = p0.Wait()
	wantLost(t, err, 1, "rank 0")
	if !strings.Contains(err.Error(), "reported by rank 2") {
		t.Errorf("rank 0: %v, want rank 2's abort, before its own deadline", err)
	}
}

// A link cut between two live ranks: each end names the other (its own hop,
// what the coordinator needs to tell which hop failed), and the abort makes
// the third name the one its abort reports.
func TestTwinCutLink(t *testing.T) {
	tw := newTwin(3)
	tw.setFate(func(from, nth int, _ *ringpb.Chunk) fate { return fate{cut: from == 1 && nth == 3} })
	rings := twinRings(t, tw, func(c *Config) { c.ChunkBytes = 16 })
	vs := randomVectors(3, 24, 8)
	errs := eachRing(rings, func(rank int, r *Ring) error { return r.AllReduce(twinCtx(t), vs[rank], Sum) })
	wantLost(t, errs[1], 2, "rank 1, whose send failed")
	if !strings.Contains(errs[1].Error(), "send to twin-2: the link was cut") {
		t.Errorf("rank 1: %v", errs[1])
	}
	wantLost(t, errs[2], 1, "rank 2, whose stream broke")
	if !strings.Contains(errs[2].Error(), "stream from twin-1 broke") {
		t.Errorf("rank 2: %v", errs[2])
	}
	wantLost(t, errs[0], 1, "rank 0, told by rank 2")
}

// A collective is not done while the transport still holds one of its
// chunks, whose payload is the caller's vector: rank 0 of a broadcast, its
// last chunk to rank 1 held back, has everything it receives, and yet it
// stays in the collective until the chunk is released (a deadline then fails
// it naming rank 1, and drops the link); with the chunk delivered in time, it
// returns only after, so that a caller overwriting its vector at once changes
// nothing that rank 1 receives (the twin compares each payload at delivery
// with its copy taken at the send).
func TestTwinHoldsTheVectorUntilReleased(t *testing.T) {
	const world, root, per, delay = 3, 2, 4, time.Millisecond
	for _, released := range []bool{false, true} {
		tw := newTwin(world)
		held := make(chan struct{})
		last := 3 - 1 // rank 0 forwards the root's 3 chunks
		tw.setFate(func(from, nth int, _ *ringpb.Chunk) fate {
			if from == 0 && nth == last {
				close(held)
				return fate{delay: delay}
			}
			return fate{}
		})
		rings := twinRings(t, tw, func(c *Config) { c.ChunkBytes = 4 * per })
		vs := randomVectors(world, 3*per, 9)
		want := slices.Clone(vs[root])
		ctx0, cancel0 := context.WithCancel(twinCtx(t))
		defer cancel0()
		pending := make([]*Pending, world)
		for r := range world {
			ctx := twinCtx(t)
			if r == 0 {
				ctx = ctx0
			}
			pending[r] = rings[r].enqueue(&Pending{ctx: ctx, kind: kindBroadcast, v: vs[r], root: root})
		}
		// Rank 0 sends its last chunk only once it has received it: from here
		// it has nothing left to receive.
		<-held
		if q := tw.queued(1); q == 0 {
			t.Fatal("rank 0's last chunk is not held")
		}
		if !released {
			cancel0()
			err := pending[0].Wait()
			wantLost(t, err, 1, "rank 0, its last chunk held past its deadline")
			if !strings.Contains(err.Error(), "stopped taking data") {
				t.Errorf("rank 0: %v, want the successor named as not taking data", err)
			}
			wantLost(t, pending[1].Wait(), 0, "rank 1, its link dropped")
			continue
		}
		got0, v0 := make(chan []float32, 1), vs[0]
		go func() {
			pending[0].Wait()
			got0 <- slices.Clone(v0)
			for i := range v0 {
				v0[i] = float32(math.NaN())
			}
		}()
		tw.advance(delay)
		for r, p := range pending {
			if err := p.Wait(); err != nil {
				t.Fatalf("rank %d: %v", r, err)
			}
		}
		vs[0] = <-got0
		checkEqualBits(t, vs, want, "broadcast with a delayed last chunk")
	}
}
