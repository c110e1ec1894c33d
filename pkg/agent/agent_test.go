package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/agentconfig"
)

const inventoryYAML = `
entries:
  - name: web-1
    ips: [10.10.0.10]
    annotations:
      visibility.antrea.io/l7-export: ingress
`

func loadConfig(t *testing.T, yaml string) agentconfig.Config {
	t.Helper()
	dir := t.TempDir()
	inv := filepath.Join(dir, "inventory.yaml")
	if err := os.WriteFile(inv, []byte(inventoryYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml = strings.ReplaceAll(yaml, "DIR", dir)
	path := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := agentconfig.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	// Unit tests build agents, never run them: the eBPF observers (real
	// programs, loaded as root) have their own tests.
	cfg.Observe.TCPHealth.Mode = agentconfig.ObserveOff
	cfg.Observe.PacketDrops.Mode = agentconfig.ObserveOff
	cfg.Observe.DNSNames.Mode = agentconfig.ObserveOff
	return cfg
}

func TestNewWiresTheConfiguredStages(t *testing.T) {
	cfg := loadConfig(t, `
nodeName: node-a
inventory:
  file: DIR/inventory.yaml
l7:
  eve:
    source: unix_stream
    path: DIR/eve.sock
  closeDelay: 2s
`)
	reg := prometheus.NewRegistry()
	a, err := New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	lc := a.loop.cfg
	if a.reader == nil || a.handoff == nil || a.loop.l7 == nil || lc.L7Events == nil {
		t.Errorf("L7 configured but reader %v, handoff %v, stage %v, events %v", a.reader, a.handoff, a.loop.l7, lc.L7Events)
	}
	if lc.Queue.CloseDelay != 2*time.Second {
		t.Errorf("close delay %s, want l7.closeDelay 2s", lc.Queue.CloseDelay)
	}
	if len(lc.Enrichers) != 1 || lc.Enrichers[0] != Enricher(a.context.src) {
		t.Errorf("enrichers %v, want the inventory", lc.Enrichers)
	}
	if !lc.Events || lc.EventQueue != conntrackEventQueue || lc.Source != Source(a.source) || lc.Sink != Sink(a.exporter) {
		t.Errorf("loop config %+v not wired to the conntrack source and exporter with events", lc)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
	}
	for _, name := range []string{
		"flowlens_agent_eve_handoff_waits_total", "flowlens_agent_final_counter_reads_failed_total",
		"flowlens_l7_events_matched_total", "flowlens_conntrack_dumps_total", "flowlens_inventory_reloads_total",
	} {
		if !have[name] {
			t.Errorf("metric %s not registered", name)
		}
	}
}

func TestNewWithoutL7OrContext(t *testing.T) {
	cfg := loadConfig(t, "nodeName: node-a\nconntrack:\n  events: false\n")
	a, err := New(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	lc := a.loop.cfg
	if a.reader != nil || a.handoff != nil || a.loop.l7 != nil || a.context != nil || len(lc.Enrichers) != 0 {
		t.Errorf("stages built that the configuration does not ask for")
	}
	if lc.Events || lc.Queue.CloseDelay != 0 {
		t.Errorf("events %v close delay %s, want false and 0", lc.Events, lc.Queue.CloseDelay)
	}
	if _, err := New(cfg, nil); err == nil {
		t.Error("New without a registry succeeded")
	}
}
