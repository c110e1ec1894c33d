package correlate

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the correlator's counters. One metrics serves one Correlator.
type metrics struct {
	Received   *prometheus.CounterVec // by flow_type
	Correlated prometheus.Counter
	Unmatched  prometheus.Counter
	Exported   *prometheus.CounterVec // by reason
	Overflow   prometheus.Counter
	L7Errors   prometheus.Counter
	Pending    prometheus.Gauge
}

// newMetrics creates the correlator's metrics and registers them on reg
// (nil: counted but not registered).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		Received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_aggregator_records_received_total",
			Help: "Records handed to the correlator, by flow type.",
		}, []string{"flow_type"}),
		Correlated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_records_correlated_total",
			Help: "Inter-node connections whose source and destination halves were merged.",
		}),
		Unmatched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_records_unmatched_total",
			Help: "Inter-node halves exported alone because the peer half did not arrive within the correlation wait.",
		}),
		Exported: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_aggregator_records_exported_total",
			Help: "Aggregated records handed to the sinks, by export reason.",
		}, []string{"reason"}),
		Overflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_correlate_overflow_total",
			Help: "Records exported at once, uncorrelated, because the connection table was full.",
		}),
		L7Errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_aggregator_l7_merge_errors_total",
			Help: "httpVals values that were not a JSON object; the valid side was kept.",
		}),
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_aggregator_pending_connections",
			Help: "Connections held in the correlation/aggregation table.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.Received, m.Correlated, m.Unmatched, m.Exported, m.Overflow, m.L7Errors, m.Pending} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register correlator metrics: %w", err)
		}
	}
	return m, nil
}
