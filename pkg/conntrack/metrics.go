package conntrack

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the conntrack source's Prometheus collectors.
type metrics struct {
	dumps            prometheus.Counter
	dumpErrors       prometheus.Counter
	dumpDuration     prometheus.Histogram
	entriesDecoded   prometheus.Counter
	entriesFiltered  prometheus.Counter
	decodeErrors     prometheus.Counter
	events           map[EventType]prometheus.Counter
	eventOverruns    prometheus.Counter
	eventErrors      prometheus.Counter
	accountingErrors prometheus.Counter
}

// newMetrics creates the collectors and registers them on reg; a nil reg
// leaves them unregistered (tests, or a caller that does not export them).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "flowlens_conntrack_" + name, Help: help})
	}
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_conntrack_events_total",
		Help: "Conntrack events received, by type (new, update, destroy).",
	}, []string{"type"})
	m := &metrics{
		dumps:      counter("dumps_total", "Conntrack table dumps started."),
		dumpErrors: counter("dump_errors_total", "Conntrack table dumps that failed."),
		dumpDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flowlens_conntrack_dump_duration_seconds",
			Help:    "Time to dump and decode the conntrack table.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14), // 1 ms .. 8 s
		}),
		entriesDecoded:   counter("entries_decoded_total", "Conntrack entries decoded from dumps and events."),
		entriesFiltered:  counter("entries_filtered_total", "Decoded conntrack entries dropped by the zone/mark filter."),
		decodeErrors:     counter("decode_errors_total", "Conntrack netlink messages dropped because they could not be decoded."),
		eventOverruns:    counter("event_overruns_total", "Times the event socket overflowed (ENOBUFS) and events were lost."),
		eventErrors:      counter("event_errors_total", "Event socket read errors other than overruns."),
		accountingErrors: counter("accounting_errors_total", "Failures to enable conntrack accounting/timestamp/event sysctls."),
		events: map[EventType]prometheus.Counter{
			EventNew:     events.WithLabelValues("new"),
			EventUpdate:  events.WithLabelValues("update"),
			EventDestroy: events.WithLabelValues("destroy"),
		},
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.dumps, m.dumpErrors, m.dumpDuration, m.entriesDecoded, m.entriesFiltered,
		m.decodeErrors, events, m.eventOverruns, m.eventErrors, m.accountingErrors,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register conntrack metrics: %w", err)
		}
	}
	return m, nil
}
