package tcphealth

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Per-CPU statistics slots of the programs (STAT_* in bpf/tcphealth.c).
const (
	statEvProbe = iota
	statEvRetrans
	statEvRstSent
	statEvRstRecv
	statEvState
	statCreated
	statReplaced
	statSocksFull
	statMinmaxFull
	statSynFull
	statNoTuple
	statMax
)

// Deletion reasons (label of deleted_entries_total).
const (
	delEndOfFlow = "end_of_flow"
	delForgotten = "forgotten"
	delSwept     = "swept"
)

// Reasons a connection's state is forgotten before its end.
const (
	forgetStale    = "stale"
	forgetCapacity = "capacity"
)

type metrics struct {
	kernel        [statMax]prometheus.Counter
	deleted       *prometheus.CounterVec
	forgotten     *prometheus.CounterVec
	evicted       prometheus.Counter
	vanished      prometheus.Counter
	foreign       prometheus.Counter
	minmaxMissing prometheus.Counter
	mapErrors     prometheus.Counter
	enriched      prometheus.Counter
	conns         prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "flowlens_tcphealth_" + name, Help: help})
	}
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_tcphealth_events_total",
		Help: "Tracepoint events the TCP health programs ran for, by tracepoint.",
	}, []string{"event"})
	full := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flowlens_tcphealth_map_full_total",
		Help: "Inserts a full kernel map refused (the socket's health, its RTT period extremes or its SYN time is not recorded), by map.",
	}, []string{"map"})
	m := &metrics{
		kernel: [statMax]prometheus.Counter{
			statEvProbe:    events.WithLabelValues("tcp_probe"),
			statEvRetrans:  events.WithLabelValues("tcp_retransmit"),
			statEvRstSent:  events.WithLabelValues("tcp_send_reset"),
			statEvRstRecv:  events.WithLabelValues("tcp_receive_reset"),
			statEvState:    events.WithLabelValues("inet_sock_set_state"),
			statCreated:    c("entries_created_total", "Socket entries the programs created."),
			statReplaced:   c("entries_replaced_total", "Closed socket entries a new socket on the same tuple replaced before user space took them (their last counts are not reported)."),
			statSocksFull:  full.WithLabelValues("socks"),
			statMinmaxFull: full.WithLabelValues("minmax"),
			statSynFull:    full.WithLabelValues("syn_start"),
			statNoTuple:    c("reset_no_tuple_total", "Sent resets whose tuple could be read neither from a socket nor from the segment answered (not counted)."),
		},
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_tcphealth_deleted_entries_total",
			Help: "Socket entries user space deleted: at the connection's last record, with a forgotten connection, or swept closed and untaken.",
		}, []string{"reason"}),
		forgotten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_tcphealth_forgotten_connections_total",
			Help: "Connections whose state was forgotten (with their entries) before their last record: not enriched for staleAfter, or over maxConnections.",
		}, []string{"reason"}),
		evicted:       c("evicted_entries_total", "Socket entries the kernel's LRU evicted, estimated at each sweep (created - deleted - present; a lower bound)."),
		vanished:      c("vanished_entries_total", "Socket entries of a connection that disappeared or were recreated between two of its records (events in between may be lost)."),
		foreign:       c("foreign_entries_total", "Socket entries a connection found taken over by a new connection on the same tuple (left to that one)."),
		minmaxMissing: c("rtt_minmax_missing_total", "Record periods in which a socket had RTT samples but no min/max entry (a sample raced the previous read, or the map was full): its average stands in for its min and max."),
		mapErrors:     c("map_errors_total", "Failed kernel map operations (lookups, deletes, walks, statistics reads)."),
		enriched:      c("records_enriched_total", "TCP records Enrich looked up."),
		conns:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowlens_tcphealth_connections", Help: "Connections whose per-socket baselines are kept."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, col := range []prometheus.Collector{
		events, full, m.kernel[statCreated], m.kernel[statReplaced], m.kernel[statNoTuple],
		m.deleted, m.forgotten, m.evicted, m.vanished, m.foreign, m.minmaxMissing, m.mapErrors, m.enriched, m.conns,
	} {
		if err := reg.Register(col); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				continue
			}
			return nil, fmt.Errorf("register tcp health metrics: %w", err)
		}
	}
	return m, nil
}
