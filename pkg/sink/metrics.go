package sink

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// dropReason labels flowlens_aggregator_sink_records_dropped_total.
type dropReason int

const (
	// dropBlocked: the queue stayed full for maxBlock.
	dropBlocked dropReason = iota
	// dropShutdown: left at shutdown (or put after it) with no spool.
	dropShutdown
	// dropPermanent: rejected by the destination, no spool configured.
	dropPermanent
	// dropSpoolFull: rejected and the spool had no room.
	dropSpoolFull
	// dropSpoolError: rejected and the spool could not be written.
	dropSpoolError
	numDropReasons
)

func (r dropReason) String() string {
	return [...]string{"blocked_timeout", "shutdown", "permanent_error", "spool_full", "spool_error"}[r]
}

// metrics are one sink's; every series carries the label sink=<name>, so
// the sinks of one process register side by side.
type metrics struct {
	queued, written, retries, errors, permanent, parked prometheus.Counter
	blocked, leftForReplay                              prometheus.Counter
	dropped                                             [numDropReasons]prometheus.Counter
	latency                                             prometheus.Histogram
	queueLen                                            prometheus.Gauge
}

func newMetrics(name string, reg prometheus.Registerer, healthy func() float64) (*metrics, error) {
	counter := func(n, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: n, Help: help})
	}
	m := &metrics{
		queued:    counter("flowlens_aggregator_sink_records_queued_total", "Records accepted into a sink's queue."),
		written:   counter("flowlens_aggregator_sink_records_written_total", "Records a sink delivered to its destination."),
		retries:   counter("flowlens_aggregator_sink_write_retries_total", "Batches written again after a failure."),
		errors:    counter("flowlens_aggregator_sink_write_errors_total", "Failed batch writes."),
		permanent: counter("flowlens_aggregator_sink_write_permanent_errors_total", "Batch writes the destination rejected for good (its rest is parked, not retried)."),
		parked:    counter("flowlens_aggregator_sink_records_parked_total", "Records written to the sink's spool file instead of its destination."),
		blocked:   counter("flowlens_aggregator_sink_put_blocked_seconds_total", "Time Put waited for room in a full queue (backpressure on the collectors)."),
		leftForReplay: counter("flowlens_aggregator_sink_records_left_for_replay_total",
			"Records undelivered at shutdown that the write-ahead log gives this sink again at the next start."),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flowlens_aggregator_sink_write_seconds",
			Help:    "Duration of one batch write.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
		queueLen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_aggregator_sink_queue_records",
			Help: "Records held by a sink (buffered during an outage), sampled at each commit interval and write.",
		}),
	}
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_aggregator_sink_records_dropped_total",
		Help: "Records a sink gave up on: blocked_timeout when its queue stayed full for maxBlock, shutdown when the flush timeout ran out " +
			"without a spool, permanent_error when the destination rejected them without a spool, spool_full and spool_error when the spool could not take them.",
	}, []string{"reason"})
	for r := range numDropReasons {
		m.dropped[r] = dropped.WithLabelValues(r.String())
	}
	health := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flowlens_aggregator_sink_healthy",
		Help: "1 while the sink delivers (see Sink.Healthy), else 0.",
	}, healthy)
	if reg == nil {
		return m, nil
	}
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"sink": name}, reg)
	for _, c := range []prometheus.Collector{m.queued, m.written, m.retries, m.errors, m.permanent, m.parked, m.blocked, m.leftForReplay,
		dropped, m.latency, m.queueLen, health} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register %s sink metrics: %w", name, err)
		}
	}
	return m, nil
}
