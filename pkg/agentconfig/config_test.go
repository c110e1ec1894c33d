package agentconfig

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestExampleConfigIsTheDefault(t *testing.T) {
	got, err := Load(filepath.Join("..", "..", "docs", "examples", "agent.yaml"))
	if err != nil {
		t.Fatalf("load example: %v", err)
	}
	want := Default()
	if err := want.Finish(); err != nil {
		t.Fatal(err)
	}
	// The example writes empty lists and structs where the default has nil.
	got.Conntrack.Zones = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("docs/examples/agent.yaml differs from Default():\n got %+v\nwant %+v", got, want)
	}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadOverridesOnlyWhatTheFileSays(t *testing.T) {
	cfg, err := Load(writeConfig(t, "nodeName: n1\nconnections:\n  activeTimeout: 2s\nexport:\n  transport: UDP\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "n1" || cfg.Connections.ActiveTimeout.D() != 2*time.Second {
		t.Errorf("file values not applied: %+v", cfg)
	}
	if cfg.Connections.IdleTimeout.D() != 15*time.Second {
		t.Errorf("idleTimeout default lost: %v", cfg.Connections.IdleTimeout.D())
	}
	if cfg.Export.Transport != "udp" {
		t.Errorf("transport not normalised: %q", cfg.Export.Transport)
	}
	if cfg.Export.ObservationDomainID == 0 {
		t.Error("observationDomainID not derived from the node name")
	}
}

func TestInvalidConfigNamesTheField(t *testing.T) {
	tests := []struct {
		name, yaml, field string
	}{
		{"negative active timeout", "connections:\n  activeTimeout: -1s\n", "connections.activeTimeout"},
		{"duration without unit", "connections:\n  idleTimeout: 15\n", "idleTimeout"},
		{"unknown transport", "export:\n  transport: sctp\n", "export.transport"},
		{"collector without port", "export:\n  collector: localhost\n", "export.collector"},
		{"zero max connections", "connections:\n  maxConnections: -5\n", "connections.maxConnections"},
		{"missing netns", "conntrack:\n  netns: /nonexistent/netns\n", "conntrack.netns"},
		{"mark outside mask", "conntrack:\n  mark: 3\n  markMask: 1\n", "conntrack.mark"},
		{"tls options on tcp", "export:\n  tls:\n    caFile: /x\n", "export.tls"},
		{"cert without key", "export:\n  transport: tls\n  tls:\n    certFile: /x\n", "export.tls.certFile"},
		{"tiny path MTU", "export:\n  pathMTU: 100\n", "export.pathMTU"},
		{"tick longer than active timeout", "connections:\n  tickInterval: 10s\n", "connections.tickInterval"},
		{"misspelt option", "conections:\n  activeTimeout: 1s\n", "conections"},
		{"bad listen address", "server:\n  listen: nope\n", "server.listen"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, "nodeName: n\n"+tc.yaml))
			if err == nil {
				t.Fatalf("config accepted, want an error naming %s", tc.field)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not name %s", err, tc.field)
			}
		})
	}
}

func TestMissingFileIsAnError(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "absent.yaml")); err == nil {
		t.Fatal("missing config file accepted")
	}
}
