package worker

import (
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/alexring/alexring/internal/rss"
	"github.com/alexring/alexring/internal/timeline"
)

// Telemetry is what a rank shows of its work besides its logs. Every part is
// optional; the zero value shows nothing.
type Telemetry struct {
	Progress io.Writer        // tqdm-style bars per epoch (a terminal)
	Metrics  *Metrics         // Prometheus series
	Timeline *timeline.Writer // Chrome trace of every step
}

// The phases of one step, in order; the names label the step_phase series and
// the timeline's events.
const (
	PhaseDataWait  = "data_wait"
	PhaseForward   = "forward"
	PhaseBackward  = "backward"
	PhaseAllReduce = "allreduce"
	PhaseOptimizer = "optimizer"
)

// stepRecord is one step as measured: when each phase started and how long it
// took.
type stepRecord struct {
	epoch, step, images int
	loss                float32
	start               time.Time
	phases              [5]struct {
		name  string
		start time.Time
		took  time.Duration
	}
	n              int
	allreduceBytes int
	world          int
	// reduced: the ring averaged the gradient, so the step counts (Position)
	// whatever came after it; skipped: the optimiser step was skipped (a
	// non-finite gradient).
	reduced, skipped bool
}

func (s *stepRecord) phase(name string, start time.Time, took time.Duration) {
	s.phases[s.n].name, s.phases[s.n].start, s.phases[s.n].took = name, start, took
	s.n++
}

func (s *stepRecord) took() time.Duration {
	last := s.phases[s.n-1]
	return last.start.Add(last.took).Sub(s.start)
}

// Metrics are a worker's Prometheus series.
type Metrics struct {
	phase          *prometheus.HistogramVec
	step           prometheus.Histogram
	imagesPerS     prometheus.Gauge
	loss           prometheus.Gauge
	valAccuracy    prometheus.Gauge
	epoch          prometheus.Gauge
	steps          prometheus.Counter
	skipped        prometheus.Counter
	badFiles       *prometheus.GaugeVec
	allreduceBytes prometheus.Counter
	busBandwidth   prometheus.Gauge
	rank, world    prometheus.Gauge

	// coordinatorSince is when the control call in flight began (Unix ns; 0:
	// none), read by the coordinator-wait gauge at each scrape.
	coordinatorSince atomic.Int64
	coordinatorWait  prometheus.Counter
}

// NewMetrics registers a worker's series in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	buckets := prometheus.ExponentialBuckets(0.001, 2, 16) // 1 ms to 33 s
	m := &Metrics{
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "alexring_step_phase_seconds",
			Help: "Time of each phase of a training step: data_wait, forward, backward, allreduce, optimizer.", Buckets: buckets}, []string{"phase"}),
		step: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "alexring_step_seconds",
			Help: "Time of a whole training step, data wait included.", Buckets: buckets}),
		imagesPerS:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_images_per_second", Help: "Training images per second of this rank over its last step."}),
		loss:           prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_train_loss", Help: "Loss of this rank's last training batch."}),
		valAccuracy:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_val_accuracy", Help: "Validation accuracy after the last epoch (rank 0)."}),
		epoch:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_epoch", Help: "The epoch being trained, from 1."}),
		steps:          prometheus.NewCounter(prometheus.CounterOpts{Name: "alexring_steps_total", Help: "Training steps taken."}),
		skipped:        prometheus.NewCounter(prometheus.CounterOpts{Name: "alexring_skipped_steps_total", Help: "Optimiser steps skipped for a non-finite gradient."}),
		badFiles:       prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "alexring_bad_files", Help: "Distinct images of each split (train, val) that failed to load and were replaced."}, []string{"split"}),
		allreduceBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "alexring_allreduce_bytes_total", Help: "Bytes of gradient averaged through the ring."}),
		busBandwidth: prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_allreduce_busbw_bytes_per_second",
			Help: "Bus bandwidth of the last all-reduce: bytes x 2(N-1)/N / time, as nccl-tests define it."}),
		rank:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_rank", Help: "This worker's rank."}),
		world: prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_world_size", Help: "Ranks in this worker's ring."}),
	}
	reg.MustRegister(m.phase, m.step, m.imagesPerS, m.loss, m.valAccuracy, m.epoch, m.steps, m.skipped,
		m.badFiles, m.allreduceBytes, m.busBandwidth, m.rank, m.world)
	m.coordinatorWait = prometheus.NewCounter(prometheus.CounterOpts{Name: "alexring_coordinator_wait_seconds_total",
		Help: "Seconds spent waiting for the coordinator's answers (control calls)."})
	if PeakRSS() > 0 { // omitted where the system does not say
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "alexring_peak_rss_bytes",
			Help: "The most resident memory this process has held (getrusage's maxrss): Go heap, C libraries' buffers and code."},
			func() float64 { return float64(PeakRSS()) }))
	}
	reg.MustRegister(m.coordinatorWait, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "alexring_coordinator_wait_seconds",
		Help: "How long the control call in flight has waited for the coordinator (0: none in flight)."}, func() float64 {
		if since := m.coordinatorSince.Load(); since != 0 {
			return time.Since(time.Unix(0, since)).Seconds()
		}
		return 0
	}))
	return m
}

// PeakRSS is the most resident memory this process has held, in bytes, or 0
// where the system does not say (rss.Peak). It counts what the Go heap
// figures leave out: oneDNN's and OpenBLAS's buffers, libjpeg's, the code.
func PeakRSS() int64 { return rss.Peak() }

// peakRSSField is PeakRSS for a log line: "unknown" where the system does
// not say, rather than a 0 that reads as a figure.
func peakRSSField() zap.Field {
	if n := PeakRSS(); n > 0 {
		return zap.Int64("peak_rss_bytes", n)
	}
	return zap.String("peak_rss_bytes", "unknown")
}

// waitingForCoordinator marks a control call begun at since, or with the
// zero time the end of the one in flight.
func (m *Metrics) waitingForCoordinator(since time.Time) {
	if m == nil {
		return
	}
	if since.IsZero() {
		if began := m.coordinatorSince.Swap(0); began != 0 {
			m.coordinatorWait.Add(time.Since(time.Unix(0, began)).Seconds())
		}
		return
	}
	m.coordinatorSince.Store(since.UnixNano())
}

// observeStep feeds one measured step to the series and the timeline.
func (tel Telemetry) observeStep(s *stepRecord) {
	if m := tel.Metrics; m != nil {
		for _, p := range s.phases[:s.n] {
			m.phase.WithLabelValues(p.name).Observe(p.took.Seconds())
			if p.name == PhaseAllReduce && s.world > 1 && p.took > 0 {
				m.allreduceBytes.Add(float64(s.allreduceBytes))
				m.busBandwidth.Set(float64(s.allreduceBytes) * 2 * float64(s.world-1) / float64(s.world) / p.took.Seconds())
			}
		}
		m.step.Observe(s.took().Seconds())
		m.imagesPerS.Set(float64(s.images) / s.took().Seconds())
		m.loss.Set(float64(s.loss))
		m.steps.Inc()
		if s.skipped {
			m.skipped.Inc()
		}
	}
	if w := tel.Timeline; w != nil {
		w.Span(fmt.Sprintf("step %d", s.step), "step", tidSteps, s.start, s.took(),
			map[string]any{"epoch": s.epoch, "images": s.images, "loss": s.loss})
		for _, p := range s.phases[:s.n] {
			var args map[string]any
			if p.name == PhaseAllReduce {
				args = map[string]any{"bucket": 0, "bytes": s.allreduceBytes, "world": s.world}
			}
			w.Span(p.name, "phase", tidPhases, p.start, p.took, args)
		}
	}
}

// The timeline's rows.
const (
	tidEpochs = iota
	tidSteps
	tidPhases
)

// startEpoch labels the timeline's rows and sets the epoch's gauges.
func (tel Telemetry) startEpoch(epoch, rank, world int) {
	if m := tel.Metrics; m != nil {
		m.epoch.Set(float64(epoch))
		m.rank.Set(float64(rank))
		m.world.Set(float64(world))
	}
	if epoch == 1 {
		tel.Timeline.NameThread(tidEpochs, "epochs")
		tel.Timeline.NameThread(tidSteps, "steps")
		tel.Timeline.NameThread(tidPhases, "phases")
	}
}

// observeValidation records rank 0's validation pass.
func (tel Telemetry) observeValidation(start time.Time, acc float64) {
	if m := tel.Metrics; m != nil {
		m.valAccuracy.Set(acc)
	}
	tel.Timeline.Span("validation", "epoch", tidEpochs, start, time.Since(start), map[string]any{"val_accuracy": acc})
}

// observeEpoch records an epoch's end.
func (tel Telemetry) observeEpoch(r EpochResult, start time.Time) {
	if m := tel.Metrics; m != nil {
		m.badFiles.WithLabelValues("train").Set(float64(r.BadTrainFiles))
		m.badFiles.WithLabelValues("val").Set(float64(r.BadValFiles))
	}
	tel.Timeline.Span(fmt.Sprintf("epoch %d", r.Epoch), "epoch", tidEpochs, start, r.Duration,
		map[string]any{"train_loss": r.TrainLoss, "images": r.Images})
	tel.Timeline.Flush()
}
