package allreduce

// The ring schedule, without any I/O: which segment a rank sends and receives
// at each step, and how a segment splits into chunks. With N ranks the vector is
// cut into N segments. Reduce-scatter (steps 0..N-2): rank r sends segment
// (r-s) mod N and adds what it receives, segment (r-s-1) mod N, into its own; after
// it rank r holds the full sum of segment (r+1) mod N. All-gather (steps
// N-1..2N-3): each rank passes on the finished segment it received last, and
// overwrites its copy with the one it receives. What a rank sends at step t is
// always what it received at step t-1, chunk by chunk, so chunk c of step t may
// leave as soon as chunk c of step t-1 has arrived: sending, receiving and adding
// overlap.
//
// Each segment is summed once, in the fixed order of the ring starting at its
// owner's successor, and then copied around unchanged: every rank ends with the
// same bits.

// segment is the range [lo, hi) of segment k of n values cut into world parts.
func segment(n, world, k int) (lo, hi int) {
	return k * n / world, (k + 1) * n / world
}

func mod(a, n int) int { return ((a % n) + n) % n }

// ringStep is one step of an all-reduce as one rank sees it.
type ringStep struct {
	send, recv int  // segment indices
	reduce     bool // add the received values (reduce-scatter) or copy them (all-gather)
	last       bool // the last reduce-scatter step: the received segment is now final
}

// allReduceSteps is rank's schedule in a ring of world ranks.
func allReduceSteps(rank, world int) []ringStep {
	var steps []ringStep
	for s := 0; s < world-1; s++ {
		steps = append(steps, ringStep{send: mod(rank-s, world), recv: mod(rank-s-1, world), reduce: true, last: s == world-2})
	}
	for s := 0; s < world-1; s++ {
		steps = append(steps, ringStep{send: mod(rank+1-s, world), recv: mod(rank-s, world)})
	}
	return steps
}

// chunks is the number of chunks of at most per values in a range of n values.
func chunks(n, per int) int {
	if n == 0 {
		return 0
	}
	return (n + per - 1) / per
}

// chunkRange is chunk c of the range [lo, hi).
func chunkRange(lo, hi, per, c int) (int, int) {
	a := lo + c*per
	return a, min(a+per, hi)
}
