package packetdrops

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the package. The reason label's values are the kernel enum's
// names (reasonNames), a bounded set.
type metrics struct {
	// From the program's per-CPU counters, read every statsInterval.
	total      *prometheus.CounterVec
	filtered   *prometheus.CounterVec
	limited    *prometheus.CounterVec
	ringFull   *prometheus.CounterVec
	notNetwork prometheus.Counter
	captured   prometheus.Counter
	recursion  prometheus.Counter

	// From the events.
	attributed   *prometheus.CounterVec
	unattributed *prometheus.CounterVec
	parseFail    prometheus.Counter
	tableFull    prometheus.Counter
	readErrors   prometheus.Counter
	entries      prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	cv := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowlens_packetdrops_" + name, Help: help}, []string{"reason"})
	}
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "flowlens_packetdrops_" + name, Help: help})
	}
	m := &metrics{
		total: cv("total", "Packets the kernel dropped for a reason that means a lost packet (kfree_skb), by the kernel's reason; "+
			"each is attributed to a flow, unattributed, rate limited, refused by the full ring, or still pending."),
		filtered: cv("filtered_total", "kfree_skb events of reasons not taken for lost packets (configured ignoreReasons), counted in the kernel and not passed up."),
		limited:  cv("rate_limited_total", "Drops counted in flowlens_packetdrops_total but not passed up: over the per-CPU rate bound."),
		ringFull: cv("ring_full_total", "Drops counted in flowlens_packetdrops_total but not passed up: the event ring was full."),
		notNetwork: c("not_network_total", "kfree_skb events of buffers that were never network packets (no L3 protocol: unix, netlink), "+
			"of kept reasons; not counted per reason."),
		captured: c("capture_copies_total", "kfree_skb events of the traffic mirror's copies ending on its capture interfaces (flc*), "+
			"of kept reasons: the original packet went on, so they are not drops of a flow."),
		recursion:  c("recursion_misses_total", "kfree_skb events the kernel did not run the program for, because a BPF program was already running on the CPU."),
		attributed: cv("attributed_total", "Drops exported in a flow record's FwdDrops/RevDrops."),
		unattributed: cv("unattributed_total", "Drops no flow took: their tuple matched no record within the TTL, "+
			"the packet had no parseable tuple (not IP, truncated, a later fragment), or the table was full."),
		parseFail:  c("parse_failures_total", "IP packets whose headers could not be read (also counted unattributed)."),
		tableFull:  c("table_full_total", "Drops of a new tuple refused by the full pending table (also counted unattributed)."),
		readErrors: c("read_errors_total", "Failed reads of the event ring or the kernel counters."),
		entries:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowlens_packetdrops_pending_tuples", Help: "Packet tuples with drops no record has taken yet."}),
	}
	if err := m.register(reg); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers the metrics with reg (nil: none), all or none: on an
// error the ones already registered are unregistered again.
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	var done []prometheus.Collector
	for _, col := range []prometheus.Collector{
		m.total, m.filtered, m.limited, m.ringFull, m.notNetwork, m.captured, m.recursion,
		m.attributed, m.unattributed, m.parseFail, m.tableFull, m.readErrors, m.entries,
	} {
		if err := reg.Register(col); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				continue
			}
			for _, c := range done {
				reg.Unregister(c)
			}
			return fmt.Errorf("register packet drop metrics: %w", err)
		}
		done = append(done, col)
	}
	return nil
}
