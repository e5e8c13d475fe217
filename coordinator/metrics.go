package coordinator

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the job-wide Prometheus series the coordinator keeps. A nil
// *Metrics records nothing.
type Metrics struct {
	membersAlive prometheus.Gauge
	world        prometheus.Gauge
	epoch        prometheus.Gauge
	trainLoss    prometheus.Gauge
	valAccuracy  prometheus.Gauge
	imagesPerS   prometheus.Gauge
	ringsFormed  prometheus.Counter
	workersLost  prometheus.Counter
	restarts     prometheus.Counter
	waitingRanks prometheus.Gauge
	waitedTotal  prometheus.Counter
	failedLinks  prometheus.Gauge
	waitSince    atomic.Int64 // unix nanoseconds the current boundary wait began; 0: none
}

// NewMetrics registers the coordinator's series in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		membersAlive: prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_members_alive", Help: "Workers alive in the cluster's membership."}),
		world:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_world_size", Help: "Ranks in the current ring."}),
		epoch:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_epoch", Help: "Epochs completed by the job."}),
		trainLoss:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_train_loss", Help: "Mean training loss of the last epoch over all ranks."}),
		valAccuracy:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_val_accuracy", Help: "Validation accuracy after the last epoch."}),
		imagesPerS:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_images_per_second", Help: "Training images per second of the whole job in the last epoch."}),
		ringsFormed:  prometheus.NewCounter(prometheus.CounterOpts{Name: "alexring_rings_formed_total", Help: "Rings formed: 1 at the start, one more per re-formation."}),
		workersLost:  prometheus.NewCounter(prometheus.CounterOpts{Name: "alexring_workers_lost_total", Help: "Workers that left or failed during the job."}),
		restarts:     prometheus.NewCounter(prometheus.CounterOpts{Name: "alexring_restarts_total", Help: "Times the job was resumed from a training-state checkpoint."}),
		waitingRanks: prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_epoch_waiting_ranks",
			Help: "Ranks whose report of the epoch the coordinator still waits for, once another rank reported or the epoch is overdue (rank 0 validates after the others report)."}),
		waitedTotal: prometheus.NewCounter(prometheus.CounterOpts{Name: "alexring_epoch_wait_seconds_total",
			Help: "Seconds epoch boundaries waited for the last reports: rank 0's validation, and any stall."}),
		failedLinks: prometheus.NewGauge(prometheus.GaugeOpts{Name: "alexring_failed_links", Help: "Links between workers (one direction each) that broke a ring and that rings avoid."}),
	}
	waitFor := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "alexring_epoch_wait_seconds",
		Help: "How long the current epoch boundary has waited for reports (0: not waiting)."}, func() float64 {
		if since := m.waitSince.Load(); since != 0 {
			return time.Since(time.Unix(0, since)).Seconds()
		}
		return 0
	})
	reg.MustRegister(m.membersAlive, m.world, m.epoch, m.trainLoss, m.valAccuracy, m.imagesPerS, m.ringsFormed, m.workersLost, m.restarts,
		m.waitingRanks, m.waitedTotal, m.failedLinks, waitFor)
	return m
}

// waitingFor shows an epoch boundary waiting since since for ranks (none and
// a zero time: not waiting).
func (m *Metrics) waitingFor(ranks []int, since time.Time) {
	if m == nil {
		return
	}
	m.waitingRanks.Set(float64(len(ranks)))
	if since.IsZero() {
		m.waitSince.Store(0)
	} else {
		m.waitSince.Store(since.UnixNano())
	}
}

func (m *Metrics) waited(d time.Duration) {
	if m != nil {
		m.waitedTotal.Add(d.Seconds())
	}
}

func (m *Metrics) linksFailed(n int) {
	if m != nil {
		m.failedLinks.Set(float64(n))
	}
}

func (m *Metrics) members(alive int) {
	if m != nil {
		m.membersAlive.Set(float64(alive))
	}
}

func (m *Metrics) ringFormed(world int) {
	if m != nil {
		m.ringsFormed.Inc()
		m.world.Set(float64(world))
	}
}

func (m *Metrics) workerLost() {
	if m != nil {
		m.workersLost.Inc()
	}
}

func (m *Metrics) resumed() {
	if m != nil {
		m.restarts.Inc()
	}
}

func (m *Metrics) epochDone(row epochRow) {
	if m != nil {
		m.epoch.Set(float64(row.Epoch))
		m.trainLoss.Set(row.TrainLoss)
		m.valAccuracy.Set(row.ValAccuracy)
		m.imagesPerS.Set(row.ImagesPerS)
	}
}
