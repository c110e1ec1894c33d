package wal

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	appended      prometheus.Counter
	committed     prometheus.Counter
	replayed      prometheus.Counter
	droppedBound  prometheus.Counter
	droppedCorr   prometheus.Counter
	corruptBytes  prometheus.Counter
	tornTails     prometheus.Counter
	writeErrors   prometheus.Counter
	syncErrors    prometheus.Counter
	removeErrors  prometheus.Counter
	bytes         prometheus.Gauge
	segments      prometheus.Gauge
	syncDurations prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_wal_dropped_records_total",
		Help: "Records the write-ahead log no longer protects although some sink had not committed them: " +
			"reason max_bytes (oldest segment removed over maxBytes), corrupt (unreadable at start-up). " +
			"They are lost only if the aggregator stops before the sinks write them.",
	}, []string{"reason"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_wal_errors_total",
		Help: "Write-ahead log I/O errors, by operation; a record whose append failed flows on unprotected.",
	}, []string{"op"})
	m := &metrics{
		appended: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_wal_appended_records_total",
			Help: "Decoded records appended to the write-ahead log.",
		}),
		committed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_wal_committed_records_total",
			Help: "Record commits (one per record and sink) written to the write-ahead log.",
		}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_wal_replayed_records_total",
			Help: "Records read back at start-up because some sink had not committed them.",
		}),
		droppedBound: dropped.WithLabelValues("max_bytes"),
		droppedCorr:  dropped.WithLabelValues("corrupt"),
		corruptBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_wal_corrupt_bytes_total",
			Help: "Bytes of write-ahead log segments skipped at start-up because their checksum failed.",
		}),
		tornTails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_wal_torn_tails_total",
			Help: "Segments whose last frame was incomplete at start-up (a write cut by a crash); truncated.",
		}),
		writeErrors:  errs.WithLabelValues("write"),
		syncErrors:   errs.WithLabelValues("sync"),
		removeErrors: errs.WithLabelValues("remove"),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_wal_bytes",
			Help: "Bytes held in write-ahead log segments.",
		}),
		segments: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_wal_segments",
			Help: "Write-ahead log segment files held.",
		}),
		syncDurations: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flowlens_wal_fsync_seconds",
			Help:    "Duration of write-ahead log fsyncs.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8),
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.appended, m.committed, m.replayed, dropped, m.corruptBytes, m.tornTails, errs, m.bytes, m.segments, m.syncDurations} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register WAL metrics: %w", err)
		}
	}
	return m, nil
}
