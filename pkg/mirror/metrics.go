package mirror

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Per-CPU statistics slots of the program (STAT_* in bpf/mirror.c).
const (
	statCopied = iota
	statFailed
	statNoTarget
	statMax
)

type metrics struct {
	mirrored     prometheus.Gauge
	missing      prometheus.Gauge
	unresolved   prometheus.Counter
	errors       prometheus.Counter
	staleRemoved prometheus.Counter
	repaired     prometheus.Counter
	bpf          []prometheus.Collector
}

func newMetrics(reg prometheus.Registerer, bpfStat func(int) float64) (*metrics, error) {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "flowlens_mirror_" + name, Help: help})
	}
	m := &metrics{
		mirrored: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowlens_mirror_interfaces", Help: "Pod interfaces whose traffic is mirrored to the capture veth."}),
		missing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowlens_mirror_unresolved_pods",
			Help: "Opted-in pod addresses whose interface cannot be found now (their traffic reaches no sensor)."}),
		unresolved:   c("unresolved_total", "Times an opted-in pod address's interface could not be found (once per episode)."),
		errors:       c("errors_total", "Failed installs, removals and capture veth set-ups of the traffic mirror."),
		staleRemoved: c("stale_removed_total", "Mirror filters and TCX links of a previous run removed at start-up."),
		repaired:     c("repaired_total", "Mirrors found gone or changed on an interface still mirrored (someone removed our filter, qdisc or TCX link) and installed again."),
	}
	bpfCounter := func(name, help string, slot int) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flowlens_mirror_bpf_" + name, Help: help}, func() float64 { return bpfStat(slot) })
	}
	m.bpf = []prometheus.Collector{
		bpfCounter("copies_total", "Packets copied to the capture veth by the TCX mirror program.", statCopied),
		bpfCounter("copy_failures_total", "Packets the TCX mirror program failed to copy (bpf_clone_redirect error: capture veth down or gone, no memory).", statFailed),
		bpfCounter("no_target_total", "Packets the TCX mirror program saw before the capture veth was set.", statNoTarget),
	}
	if reg == nil {
		return m, nil
	}
	for _, col := range append([]prometheus.Collector{m.mirrored, m.missing, m.unresolved, m.errors, m.staleRemoved, m.repaired}, m.bpf...) {
		if err := reg.Register(col); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				continue
			}
			return nil, fmt.Errorf("register mirror metrics: %w", err)
		}
	}
	return m, nil
}

// bpfStat sums one per-CPU statistics slot; 0 without the program.
func (m *Mirror) bpfStat(slot int) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.objs == nil {
		return 0
	}
	var per []uint64
	if err := m.objs.Stats.Lookup(uint32(slot), &per); err != nil {
		return 0
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	return float64(sum)
}
