package agent

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestNewShardsOverExportCollectors(t *testing.T) {
	cfg := loadConfig(t, `
nodeName: node-a
export:
  collectors: ["127.0.0.1:4739", "127.0.0.1:4740"]
`)
	reg := prometheus.NewRegistry()
	a, err := New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	if a.sharded == nil || a.exporter != nil || a.loop.cfg.Sink != Sink(a.sharded) {
		t.Fatalf("sharded %v exporter %v sink %v: want the loop to export to the sharded sink", a.sharded, a.exporter, a.loop.cfg.Sink)
	}
	if got := a.sharded.ring.Members(); len(got) != 2 || got[0] != "127.0.0.1:4739" || got[1] != "127.0.0.1:4740" {
		t.Errorf("ring %v", got)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// One exporter per replica, told apart by the collector label.
	perCollector := map[string]bool{}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
		if f.GetName() != "flowlens_ipfix_exporter_buffered_records" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "collector" {
					perCollector[l.GetValue()] = true
				}
			}
		}
	}
	if !perCollector["127.0.0.1:4739"] || !perCollector["127.0.0.1:4740"] || len(perCollector) != 2 {
		t.Errorf("exporter metrics for collectors %v", perCollector)
	}
	for _, name := range []string{"flowlens_agent_collector_ring_size", "flowlens_agent_collector_replicas",
		"flowlens_agent_collector_failovers_total", "flowlens_agent_collector_resolve_errors_total"} {
		if !have[name] {
			t.Errorf("metric %s not registered", name)
		}
	}

	cfg = loadConfig(t, "nodeName: node-a\nexport:\n  collectorDNS: flowlens-aggregator.example:4739\n  resolveInterval: 5s\n")
	a, err = New(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if a.sharded == nil || a.sharded.cfg.ResolveInterval.String() != "5s" || a.sharded.dnsHost != "flowlens-aggregator.example" {
		t.Errorf("collectorDNS not wired: %+v", a.sharded)
	}
}
