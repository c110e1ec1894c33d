package ipfixexport

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	recordsSent  prometheus.Counter
	messagesSent prometheus.Counter
	bytesSent    prometheus.Counter
	resent       prometheus.Counter
	connected    prometheus.Gauge

	refused        prometheus.Counter
	dropBufferFull prometheus.Counter
	dropTooLarge   prometheus.Counter
	dropShutdown   prometheus.Counter

	errDial      prometheus.Counter
	errWrite     prometheus.Counter
	errPeerClose prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, buffered func() float64) (*metrics, error) {
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_ipfix_exporter_records_dropped_total",
		Help: "Records not sent, by reason: buffer_full (buffer full and the collector unreachable, or no record sent, for longer than the backpressure timeout), too_large (one record exceeds the message size), shutdown (still buffered when Run returned).",
	}, []string{"reason"})
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_ipfix_exporter_connection_errors_total",
		Help: "Connection failures by stage: dial (including TLS handshake), write, peer_closed (the collector closed or reset the connection).",
	}, []string{"stage"})
	m := &metrics{
		recordsSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_ipfix_exporter_records_sent_total", Help: "Data records written to the collector connection.",
		}),
		messagesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_ipfix_exporter_messages_sent_total", Help: "IPFIX messages written, templates included.",
		}),
		bytesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_ipfix_exporter_bytes_sent_total", Help: "IPFIX message bytes written.",
		}),
		resent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_ipfix_exporter_records_resent_total",
			Help: "Records queued again for the next connection because the one they were written to failed before the collector acknowledged them (or in the middle of writing them).",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flowlens_ipfix_exporter_records_refused_total",
			Help: "Records refused because the buffer was full (backpressure: the producer keeps them and offers them again). Not a loss.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_ipfix_exporter_connected", Help: "1 while a connection to the collector is up.",
		}),
		dropBufferFull: dropped.WithLabelValues("buffer_full"),
		dropTooLarge:   dropped.WithLabelValues("too_large"),
		dropShutdown:   dropped.WithLabelValues("shutdown"),
		errDial:        errs.WithLabelValues("dial"),
		errWrite:       errs.WithLabelValues("write"),
		errPeerClose:   errs.WithLabelValues("peer_closed"),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{
		m.recordsSent, m.messagesSent, m.bytesSent, m.resent, m.refused, m.connected, dropped, errs,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "flowlens_ipfix_exporter_buffered_records", Help: "Records waiting to be sent.",
		}, buffered),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register exporter metrics: %w", err)
		}
	}
	return m, nil
}
