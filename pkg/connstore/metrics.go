package connstore

import (
	"fmt"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	conns, tombstones, memory             prometheus.Gauge
	created, closed, stale                prometheus.Counter
	evicted, lateIgnored, emptyIdle       prometheus.Counter
	replacedByID, replacedByCtr           prometheus.Counter
	replacedByStart, replacedAfterDestroy prometheus.Counter
	tombsDestroyed                        prometheus.Counter
	tombsDroppedAge, tombsDroppedFull     prometheus.Counter
	records                               [flow.EndLackResources + 1]prometheus.Counter
}

func (s *Store) initMetrics(reg prometheus.Registerer) error {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	replaced := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_connstore_connections_replaced_total",
		Help: "Connections ended because a new kernel entry took their tuple (new conntrack id, counters went backwards, later start time, or reported after its DESTROY).",
	}, []string{"cause"})
	tombsDropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_connstore_tombstones_dropped_total",
		Help: "Tombstones dropped before their connection's DESTROY came: after waiting TombstoneMaxAge for it (max-age), or to make room at MaxConnections (capacity). A later report of such a connection is exported again.",
	}, []string{"cause"})
	records := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_connstore_records_emitted_total",
		Help: "Flow records produced, by flowEndReason.",
	}, []string{"reason"})
	s.m = metrics{
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_connstore_connections",
			Help: "Connections tracked.",
		}),
		memory: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_connstore_memory_bytes",
			Help: "Memory the connection store holds for its connections and indexes, most of it outside the Go heap (so not in go_memstats_*): it grows with the largest number of connections held and does not shrink.",
		}),
		tombstones: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_connstore_tombstones",
			Help: "Ended connections remembered so that late reports of them (dump rows during TIME_WAIT, their DESTROY event) do not bring them back.",
		}),
		created: counter("flowlens_connstore_connections_new_total", "Connections added to the store."),
		closed:  counter("flowlens_connstore_connections_closed_total", "Connections closed by a report that they ended (FIN handshake or DESTROY event)."),
		stale: counter("flowlens_connstore_connections_stale_closed_total",
			"Connections closed because a complete dump no longer had them."),
		evicted: counter("flowlens_connstore_connections_evicted_total",
			"Connections evicted at MaxConnections (exported with reason lack-of-resources)."),
		emptyIdle: counter("flowlens_connstore_empty_idle_records_skipped_total",
			"Connections that went idle before any counter of theirs was known (counted by conntrack while the eBPF program counts the rest: their counters come with the resync or their end): marked idle without a record that would say nothing."),
		lateIgnored: counter("flowlens_connstore_late_reports_ignored_total",
			"Reports ignored because they described an older connection than the one stored for the tuple."),
		replacedByID:         replaced.WithLabelValues("id"),
		replacedByCtr:        replaced.WithLabelValues("counters"),
		replacedByStart:      replaced.WithLabelValues("start"),
		replacedAfterDestroy: replaced.WithLabelValues("destroyed"),
		tombsDestroyed: counter("flowlens_connstore_tombstone_destroys_total",
			"DESTROY events of connections already exported: they end the connection's tombstone and export nothing."),
		tombsDroppedAge:  tombsDropped.WithLabelValues("max-age"),
		tombsDroppedFull: tombsDropped.WithLabelValues("capacity"),
	}
	for r := flow.EndIdleTimeout; r <= flow.EndLackResources; r++ {
		s.m.records[r] = records.WithLabelValues(r.String())
	}
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{
		s.m.conns, s.m.tombstones, s.m.memory, s.m.created, s.m.closed, s.m.stale, s.m.evicted, s.m.lateIgnored, s.m.emptyIdle, replaced, records,
		s.m.tombsDestroyed, tombsDropped,
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("connstore: register metrics: %w", err)
		}
	}
	return nil
}
