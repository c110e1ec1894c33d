package l7

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons of flowlens_l7_events_dropped_total.
const (
	dropNoL7        = "no_l7"        // the event names no app protocol and carries no details (alert, anomaly ...)
	dropNotWanted   = "not_wanted"   // neither end of the connection opted into L7 export
	dropUnmatched   = "unmatched"    // no connection matched within MaxPendingAge
	dropPendingFull = "pending_full" // the pending buffer was full; the oldest event was dropped
	dropStateFull   = "state_full"   // MaxConnections connections already hold L7 state
)

// metrics are the L7 matcher's Prometheus collectors.
type metrics struct {
	matched      prometheus.Counter
	deferred     prometheus.Counter
	dropped      map[string]prometheus.Counter
	truncated    map[string]prometheus.Counter
	stateExpired prometheus.Counter
	enriched     prometheus.Counter
	pending      prometheus.Gauge
	connections  prometheus.Gauge
}

// newMetrics creates the collectors and registers them on reg; a nil reg
// leaves them unregistered.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_l7_events_dropped_total",
		Help: "EVE events not attached to any record, by reason (no_l7, not_wanted, unmatched, pending_full, state_full).",
	}, []string{"reason"})
	truncated := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_l7_http_transactions_truncated_total",
		Help: "HTTP transactions left out of httpVals because a record reached its bound, by limit (transactions, bytes).",
	}, []string{"limit"})
	m := &metrics{
		matched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_l7_events_matched_total",
			Help: "EVE events matched to a connection that wants L7 export.",
		}),
		deferred: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_l7_events_deferred_total",
			Help: "EVE events that arrived before their connection was known and waited in the pending buffer.",
		}),
		dropped:   map[string]prometheus.Counter{},
		truncated: map[string]prometheus.Counter{},
		stateExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_l7_state_expired_total",
			Help: "Per-connection L7 states dropped because no record was exported for them within StateMaxAge.",
		}),
		enriched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_l7_records_enriched_total",
			Help: "Flow records that received L7 fields.",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_l7_pending_events",
			Help: "EVE events waiting for their connection.",
		}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_l7_connections",
			Help: "Connections holding L7 state.",
		}),
	}
	for _, r := range []string{dropNoL7, dropNotWanted, dropUnmatched, dropPendingFull, dropStateFull} {
		m.dropped[r] = dropped.WithLabelValues(r)
	}
	for _, l := range []string{"transactions", "bytes"} {
		m.truncated[l] = truncated.WithLabelValues(l)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.matched, m.deferred, dropped, truncated, m.stateExpired, m.enriched, m.pending, m.connections} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register l7 metrics: %w", err)
		}
	}
	return m, nil
}
