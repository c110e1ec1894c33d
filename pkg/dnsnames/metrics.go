package dnsnames

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Per-CPU statistics slots of the program (STAT_* in bpf/dnsnames.c).
const (
	statEvents = iota
	statRingFull
	statRateLimited
	statTruncated
	statSegsSkipped
	statMax
)

type metrics struct {
	kernel       [statMax]prometheus.Counter
	responses    prometheus.Counter
	parseErrors  prometheus.Counter
	readErrors   prometheus.Counter
	answers      prometheus.Counter
	evictions    prometheus.Counter
	entries      prometheus.Gauge
	named        prometheus.Counter
	conns        prometheus.Gauge
	connsFull    prometheus.Counter
	attached     prometheus.Gauge
	attachErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "flowlens_dnsnames_" + name, Help: help})
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowlens_dnsnames_" + name, Help: help})
	}
	m := &metrics{
		kernel: [statMax]prometheus.Counter{
			statEvents:      c("ring_events_total", "Answered DNS responses the program passed up through the ring."),
			statRingFull:    c("ring_losses_total", "Answered DNS responses lost because the ring was full (their names are not learnt)."),
			statRateLimited: c("rate_limited_total", "Answered DNS responses not passed up because their CPU was over maxResponsesPerSecond."),
			statTruncated:   c("truncated_total", "DNS responses passed up that were longer than the copy bound (1232 bytes): only the answers that fit are used."),
			statSegsSkipped: c("segments_skipped_total", "UDP GSO/GRO packets holding more DNS responses than the program reads from one packet (64): the responses past it are not read."),
		},
		responses:    c("responses_total", "DNS responses read from the ring and parsed."),
		parseErrors:  c("parse_errors_total", "DNS responses read from the ring that could not be parsed or were not usable (malformed, no single question, a name that is not a hostname)."),
		readErrors:   c("read_errors_total", "Failed or malformed ring reads."),
		answers:      c("answers_total", "Address-to-name answers stored in the cache."),
		evictions:    c("cache_evictions_total", "Live cache entries evicted to make room for new ones (the cache is full: raise dnsNames.cacheEntries)."),
		entries:      g("cache_entries", "Entries in the address-to-name cache (per client and per namespace)."),
		named:        c("records_named_total", "Flow records that received a destination name."),
		conns:        g("named_connections", "Open connections holding the name they were first given."),
		connsFull:    c("named_connections_full_total", "Named records whose connection could not keep its name (table full); their later records look the name up again."),
		attached:     g("attached_interfaces", "Interfaces the DNS response program is attached to."),
		attachErrors: c("attach_errors_total", "Failed attaches and detaches of the DNS response program."),
	}
	if reg == nil {
		return m, nil
	}
	for _, col := range []prometheus.Collector{
		m.kernel[statEvents], m.kernel[statRingFull], m.kernel[statRateLimited], m.kernel[statTruncated], m.kernel[statSegsSkipped],
		m.responses, m.parseErrors, m.readErrors, m.answers, m.evictions, m.entries,
		m.named, m.conns, m.connsFull, m.attached, m.attachErrors,
	} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register dns names metrics: %w", err)
		}
	}
	return m, nil
}
