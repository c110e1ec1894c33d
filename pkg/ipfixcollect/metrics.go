package ipfixcollect

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	messages    prometheus.Counter
	records     prometheus.Counter
	connections prometheus.Counter
	active      prometheus.Gauge
	udpEvicted  prometheus.Counter
	idleClosed  prometheus.Counter

	refusedConnections    prometheus.Counter
	refusedTemplates      prometheus.Counter
	refusedTemplateFields prometheus.Counter

	errMalformed       prometheus.Counter
	errZeroLength      prometheus.Counter
	errFieldLimit      prometheus.Counter
	errUnknownTemplate prometheus.Counter
	errUnknownSet      prometheus.Counter
	errTLS             prometheus.Counter
	errRead            prometheus.Counter
	errAccept          prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_ipfix_collector_errors_total",
		Help: "Input the collector could not use, by reason: malformed (message or set; the rest of the message is skipped), " +
			"zero_length_field (template rejected: a fixed-length field of length 0), field_limit (message past MaxFieldsPerMessage; the rest is skipped), " +
			"unknown_template (data set skipped), unknown_set, tls_handshake, read, accept.",
	}, []string{"reason"})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_ipfix_collector_refused_total",
		Help: "What a bound refused, by reason: connection_limit (a TCP/TLS connection beyond MaxConnections, closed at once), " +
			"template_limit (a template beyond MaxTemplatesPerSession), template_field_limit (a template past MaxTemplateFieldsPerSession).",
	}, []string{"reason"})
	m := &metrics{
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_ipfix_collector_messages_total", Help: "IPFIX messages received.",
		}),
		records: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_ipfix_collector_records_total", Help: "Data records decoded and delivered.",
		}),
		connections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_ipfix_collector_connections_total", Help: "TCP/TLS connections accepted.",
		}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_ipfix_collector_connections", Help: "TCP/TLS connections open.",
		}),
		udpEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_ipfix_collector_udp_sessions_evicted_total",
			Help: "UDP exporters whose templates were forgotten because MaxUDPSessions was reached.",
		}),
		idleClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_ipfix_collector_idle_closed_total",
			Help: "TCP/TLS connections closed (orderly) because no complete message arrived within IdleTimeout.",
		}),
		refusedConnections:    refused.WithLabelValues("connection_limit"),
		refusedTemplates:      refused.WithLabelValues("template_limit"),
		refusedTemplateFields: refused.WithLabelValues("template_field_limit"),
		errMalformed:          errs.WithLabelValues("malformed"),
		errZeroLength:         errs.WithLabelValues("zero_length_field"),
		errFieldLimit:         errs.WithLabelValues("field_limit"),
		errUnknownTemplate:    errs.WithLabelValues("unknown_template"),
		errUnknownSet:         errs.WithLabelValues("unknown_set"),
		errTLS:                errs.WithLabelValues("tls_handshake"),
		errRead:               errs.WithLabelValues("read"),
		errAccept:             errs.WithLabelValues("accept"),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.messages, m.records, m.connections, m.active, m.udpEvicted, m.idleClosed, errs, refused} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register collector metrics: %w", err)
		}
	}
	return m, nil
}
