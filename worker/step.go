package worker

import (
	"context"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/sharding"
)

// step trains on the loader's next batch (io.EOF after the last): the
// gradient, averaged over the ring together with every rank's NaN flag,
// checked, and Adam's update. A gradient that is not finite on any rank stops
// the training before the update, or with skip_nonfinite skips it, on every
// rank alike. The record says what the step did and when each phase ran.
func (t *Trainer) step(ctx context.Context, loader *sharding.Loader, epoch, n int) (rec stepRecord, err error) {
	vec := t.ring.view(t.coll.World())
	rec = stepRecord{epoch: epoch, step: n, world: t.coll.World(), allreduceBytes: vec.bytes(), start: time.Now()}
	b, err := loader.Next()
	if err != nil {
		if err != io.EOF {
			err = fmt.Errorf("worker: epoch %d: %w", epoch, err)
		}
		return rec, err
	}
	rec.phase(PhaseDataWait, rec.start, time.Since(rec.start))
	grad := vec.Grad()
	ov := t.startOverlap(ctx, grad)
	st, err := t.gradient(b, grad, ov.start, &rec)
	rec.images, rec.loss = b.Count, st.Loss
	loader.Release(b)
	if err != nil {
		ov.wait() // it reads and writes grad: let it end first
		return rec, fmt.Errorf("worker: epoch %d step %d: %w", epoch, n, err)
	}
	start := time.Now()
	bad, err := t.reduce(ctx, vec, ov, st.Finite)
	if err != nil {
		return rec, fmt.Errorf("worker: epoch %d step %d: gradient all-reduce: %w", epoch, n, err)
	}
	rec.phase(PhaseAllReduce, start, time.Since(start))
	rec.reduced = true
	if len(bad) > 0 || !allFinite(grad) {
		if !t.cfg.SkipNonFinite {
			return rec, fmt.Errorf("worker: epoch %d step %d: non-finite loss or gradient from rank %v; stopped before the optimiser step (skip_nonfinite: true skips such steps)", epoch, n, bad)
		}
		rec.skipped = true
		return rec, nil
	}
	start = time.Now()
	if err := t.backend.Update(grad); err != nil {
		return rec, fmt.Errorf("worker: epoch %d step %d: Adam on %s: %w", epoch, n, t.compute.Device, err)
	}
	rec.phase(PhaseOptimizer, start, time.Since(start))
	return rec, nil
}

// gradient runs the backend's forward and backward passes on b into grad
// (nil: the backend keeps it), times them, split where the loss is computed,
// and logs a gradient that is not finite. classifierReady, when set, runs as
// soon as the classifier's part of grad is final.
func (t *Trainer) gradient(b *sharding.Batch, grad []float32, classifierReady func(), rec *stepRecord) (alexnet.Step, error) {
	var lossAt time.Time
	start := time.Now()
	st, err := t.backend.Gradient(b.Images, b.Labels, b.Count, t.rng, grad, alexnet.Hooks{
		LossComputed:    func() { lossAt = time.Now() },
		ClassifierReady: classifierReady,
	})
	end := time.Now()
	if lossAt.IsZero() { // the loss was not reached
		lossAt = end
	}
	rec.phase(PhaseForward, start, lossAt.Sub(start))
	rec.phase(PhaseBackward, lossAt, end.Sub(lossAt))
	if err == nil && !st.Finite {
		t.log.Warn("non-finite loss or gradient", zap.Int("epoch", rec.epoch), zap.Int("step", rec.step), zap.Int("rank", t.coll.Rank()), zap.Float32("loss", st.Loss))
	}
	return st, err
}

// overlap is the part of a step's all-reduce that starts during the backward
// pass: the classifier's gradients, final early in it, averaged while the
// convolutions' backward runs (ring.overlap, or a backend that leaves the CPU
// free). The rest of the gradient, with the flags, goes after it.
type overlap struct {
	from  int    // where the early part starts in the gradient: len(grad) for none
	start func() // the backend's ClassifierReady hook; nil for none
	done  func() error
}

// startOverlap sets up the early part of grad's all-reduce where it pays. With
// the features frozen the gradient is the classifier's alone: nothing runs
// after it to overlap with.
func (t *Trainer) startOverlap(ctx context.Context, grad []float32) *overlap {
	e := &overlap{from: len(grad)}
	if grad != nil && t.trainFrom == 0 && (t.cfg.Ring.Overlap || t.compute.FreesCPU) {
		e.from = t.params.Spec.ClassifierOffset()
		e.start = func() { e.done = t.coll.StartAllReduceAvg(ctx, grad[e.from:]) }
	}
	return e
}

// wait waits for the early all-reduce, if one started.
func (e *overlap) wait() error {
	if e.done == nil {
		return nil
	}
	return e.done()
}

// reduce averages vec over the ring, the early part of its gradient already
// under way, with this rank's flag set where its gradient was not finite, and
// returns the ranks whose gradient was not. A world of one averages nothing.
func (t *Trainer) reduce(ctx context.Context, vec stepVector, e *overlap, finite bool) (bad []int, err error) {
	if vec.world == 0 {
		if !finite {
			bad = []int{t.coll.Rank()}
		}
		return bad, nil
	}
	vec.flag(t.coll.Rank(), finite)
	err = t.coll.AllReduceAvg(ctx, vec.through(e.from))
	if werr := e.wait(); err == nil {
		err = werr
	}
	return vec.culprits(), err
}

// ringVector is the buffer a step all-reduces: a header of NaN flags, one per
// rank, then the gradient of the trained parameters (Flat[trainFrom:]). One
// buffer, so that a single all-reduce averages both: a second collective per
// step, for the flags alone, would cost the ring's latency again. The buffer
// (a backend HostVector: page-locked on a GPU) has room for room flags; a
// ring of w ranks uses the w just before the gradient (stepVector), so a ring
// that grows to room ranks needs no new one.
type ringVector struct {
	buf  []float32 // room flags, then the gradient
	room int
}

// fit makes room for world flags before a gradient of n values.
func (r *ringVector) fit(world, n int, alloc func(int) ([]float32, error)) error {
	if world <= r.room {
		return nil
	}
	room := max(world, 16) // room to grow: a late joiner then costs no new vector
	buf, err := alloc(room + n)
	if err != nil {
		return err
	}
	r.buf, r.room = buf, room
	return nil
}

// view is the vector of a step in a ring of world ranks; the zero stepVector
// in a world of one, which keeps its gradient in the backend.
func (r *ringVector) view(world int) stepVector {
	if world == 1 {
		return stepVector{}
	}
	return stepVector{v: r.buf[r.room-world:], world: world}
}

// stepVector is one ring's view of a ringVector: world flags, then the
// gradient, adjacent. A rank's flag is 1 where its gradient was not finite and
// 0 elsewhere, so after the averaging it is non-zero exactly for the ranks
// that set it.
type stepVector struct {
	v     []float32
	world int
}

// Flags are the ranks' NaN flags, nil in a world of one.
func (s stepVector) Flags() []float32 { return s.v[:s.world] }

// Grad is the gradient, nil in a world of one.
func (s stepVector) Grad() []float32 { return s.v[s.world:] }

// through is the flags and Grad()[:n]: what is all-reduced after the backward
// pass when Grad()[n:] went early.
func (s stepVector) through(n int) []float32 { return s.v[:s.world+n] }

func (s stepVector) bytes() int { return 4 * len(s.v) }

// flag sets rank's flag (finite or not) and clears the others'.
func (s stepVector) flag(rank int, finite bool) {
	flags := s.Flags()
	clear(flags)
	if !finite {
		flags[rank] = 1
	}
}

// culprits are the ranks whose flag survived the averaging.
func (s stepVector) culprits() []int {
	var bad []int
	for r, f := range s.Flags() {
		if f != 0 {
			bad = append(bad, r)
		}
	}
	return bad
}

func allFinite(v []float32) bool {
	for _, x := range v {
		// x-x is 0 for every finite x, NaN for NaN and the infinities.
		if x-x != 0 {
			return false
		}
	}
	return true
}
