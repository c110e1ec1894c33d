package sink

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the sinks' counters, labelled by sink name; one Metrics
// serves every Sink of a process.
type Metrics struct {
	queued   *prometheus.CounterVec
	written  *prometheus.CounterVec
	retries  *prometheus.CounterVec
	errors   *prometheus.CounterVec
	dropped  *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	queueLen *prometheus.GaugeVec
}

// NewMetrics creates the sink metrics and registers them on reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		queued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_aggregator_sink_records_queued_total",
			Help: "Records accepted into a sink's queue.",
		}, []string{"sink"}),
		written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_aggregator_sink_records_written_total",
			Help: "Records a sink delivered to its destination.",
		}, []string{"sink"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_aggregator_sink_write_retries_total",
			Help: "Batches written again after a failure.",
		}, []string{"sink"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_aggregator_sink_write_errors_total",
			Help: "Failed batch writes.",
		}, []string{"sink"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_aggregator_sink_records_dropped_total",
			Help: "Records a sink gave up on: queue_full when its bound was reached, shutdown when the flush timeout ran out.",
		}, []string{"sink", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flowlens_aggregator_sink_write_seconds",
			Help:    "Duration of one batch write.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}, []string{"sink"}),
		queueLen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flowlens_aggregator_sink_queue_records",
			Help: "Records held by a sink (buffered during an outage), sampled at each commit interval and write.",
		}, []string{"sink"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.queued, m.written, m.retries, m.errors, m.dropped, m.latency, m.queueLen} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register sink metrics: %w", err)
		}
	}
	return m, nil
}

type sinkMetrics struct {
	queued, written, retries, errors prometheus.Counter
	dropFull, dropShutdown           prometheus.Counter
	latency                          prometheus.Observer
	queueLen                         prometheus.Gauge
}

func (m *Metrics) forSink(name string) sinkMetrics {
	return sinkMetrics{
		queued:       m.queued.WithLabelValues(name),
		written:      m.written.WithLabelValues(name),
		retries:      m.retries.WithLabelValues(name),
		errors:       m.errors.WithLabelValues(name),
		dropFull:     m.dropped.WithLabelValues(name, "queue_full"),
		dropShutdown: m.dropped.WithLabelValues(name, "shutdown"),
		latency:      m.latency.WithLabelValues(name),
		queueLen:     m.queueLen.WithLabelValues(name),
	}
}
