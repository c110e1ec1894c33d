package bpfcounters

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Per-CPU statistics slots of the program (STAT_* in bpf/counters.c).
const (
	statMapFull = iota
	statRingFull
	statParseFail
	statNonIP
	statFragment
	statLostRecords
	statMax
)

type metrics struct {
	kernel       [statMax]prometheus.Counter
	fullWalks    prometheus.Counter
	readKeys     prometheus.Counter
	readErrors   prometheus.Counter
	lostKeys     prometheus.Counter
	unattributed prometheus.Counter
	lossyKeys    prometheus.Gauge
	attached     prometheus.Gauge
	bulk         prometheus.Gauge
	quietRounds  prometheus.Counter
	attachErrors prometheus.Counter
	swept        prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "flowlens_bpf_" + name, Help: help})
	}
	m := &metrics{
		kernel: [statMax]prometheus.Counter{
			statMapFull:     c("map_full_total", "Packets whose new flow entry did not fit in the full flow map (their connection falls back to conntrack's counters)."),
			statRingFull:    c("ring_full_total", "Changed-key notifications the full ring dropped (each forces a full map walk on the next read)."),
			statParseFail:   c("parse_failures_total", "Packets whose headers were truncated or malformed (counted with what was parsed, or not at all without an IP header)."),
			statNonIP:       c("non_ip_packets_total", "Non-IP packets seen and not counted (ARP, LLDP...)."),
			statFragment:    c("fragments_total", "Non-first IP fragments, counted under ports 0."),
			statLostRecords: c("lost_records_total", "Lost-key records the program wrote or tried to write to the ring (one per key that did not fit, per read round)."),
		},
		fullWalks:    c("full_walks_total", "Read rounds that walked the whole flow map because the ring had overflowed."),
		readKeys:     c("read_keys_total", "Changed flow entries read."),
		quietRounds:  c("quiet_rounds_total", "Read rounds skipped because nothing was notified since the last one (one round a second runs anyway)."),
		readErrors:   c("read_errors_total", "Failed flow map or ring reads."),
		lostKeys:     c("lost_keys_total", "Flow keys reported lost to a full map."),
		unattributed: c("unattributed_losses_total", "Read rounds that found lost-key records missing from the ring (connections first counted before then are reported lossy)."),
		lossyKeys:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowlens_bpf_lossy_keys", Help: "Flow keys currently known to have lost packets."}),
		attached:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowlens_bpf_attached_interfaces", Help: "Interfaces the flow counters are attached to."}),
		bulk:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowlens_bpf_bulk_programs", Help: "1 when the flow map's lookups and deletions run as one program run per batch of keys (Linux 5.14+), 0 when they take a system call per key or per batch."}),
		attachErrors: c("attach_errors_total", "Failed attaches and detaches of the flow counter programs."),
		swept:        c("swept_entries_total", "Flow entries deleted by Sweep (idle, owned by no connection)."),
	}
	if reg == nil {
		return m, nil
	}
	for _, col := range []prometheus.Collector{
		m.kernel[statMapFull], m.kernel[statRingFull], m.kernel[statParseFail], m.kernel[statNonIP],
		m.kernel[statFragment], m.kernel[statLostRecords],
		m.fullWalks, m.readKeys, m.quietRounds, m.readErrors, m.lostKeys, m.unattributed,
		m.lossyKeys, m.attached, m.bulk, m.attachErrors, m.swept,
	} {
		if err := reg.Register(col); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				continue
			}
			return nil, fmt.Errorf("register bpf counter metrics: %w", err)
		}
	}
	return m, nil
}
