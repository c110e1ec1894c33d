package agentconfig

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/confutil"
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
		{"template refresh count 0", "export:\n  templateRefreshMessages: 0\n", "export.templateRefreshMessages"},
		{"template refresh count too large", "export:\n  templateRefreshMessages: 100001\n", "export.templateRefreshMessages"},
		{"tick longer than active timeout", "connections:\n  tickInterval: 10s\n", "connections.tickInterval"},
		{"misspelt option", "conections:\n  activeTimeout: 1s\n", "conections"},
		{"bad listen address", "server:\n  listen: nope\n", "server.listen"},
		{"collector port out of range", "export:\n  collector: host:70000\n", "export.collector"},
		{"string where a number goes", "export:\n  pathMTU: big\n", "export.pathMTU"},
		{"unknown counter source", "counters:\n  source: pcap\n", "counters.source"},
		{"ebpf counters without events", "counters:\n  source: ebpf\nconntrack:\n  events: false\n", "counters.source"},
		{"unknown attach mode", "counters:\n  attach: xdp\n", "counters.attach"},
		{"tiny counter map", "counters:\n  mapEntries: 10\n", "counters.mapEntries"},
		{"zero resync interval", "conntrack:\n  resyncInterval: 0s\n", "conntrack.resyncInterval"},
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

func TestEveryBadFieldIsReportedAtOnce(t *testing.T) {
	_, err := Load(writeConfig(t, "nodeName: n\nconnections:\n  activeTimeout: 0s\n  maxConnections: 0\nexport:\n  transport: sctp\nl7:\n  pendingEvents: 0\n"))
	want := []string{"connections.maxConnections", "connections.activeTimeout", "connections.tickInterval", "export.transport", "l7.pendingEvents"}
	if got := confutil.Fields(err); !reflect.DeepEqual(got, want) {
		t.Errorf("fields = %v, want %v\n%v", got, want, err)
	}
	_, err = Load(writeConfig(t, "nodeName: n\nconnections:\n  idleTimeout: 15\n  maxConnections: many\nexprt: {}\nexport:\n  bufferRecords: 0\n"))
	// Values of the wrong type and unknown keys, then what validation
	// finds in the values that could be read.
	want = []string{"connections.idleTimeout", "connections.maxConnections", "exprt", "export.bufferRecords"}
	if got := confutil.Fields(err); !reflect.DeepEqual(got, want) {
		t.Errorf("fields = %v, want %v\n%v", got, want, err)
	}
}

func TestEverySizeOptionHasAnUpperBound(t *testing.T) {
	for _, tc := range []struct{ field, yaml, bound string }{
		{"connections.maxConnections", "connections:\n  maxConnections: 2000000000\n", "16777216"},
		{"export.bufferRecords", "export:\n  bufferRecords: 2000000000\n", "1000000"},
		{"export.pathMTU", "export:\n  pathMTU: 70000\n", "65535"},
		{"l7.eve.maxLineBytes", "l7:\n  eve:\n    maxLineBytes: 2000000000\n", "268435456"},
		{"l7.eve.maxClients", "l7:\n  eve:\n    maxClients: 2000000000\n", "1024"},
		{"l7.eve.maxBufferedBytes", "l7:\n  eve:\n    maxBufferedBytes: 2000000000\n", "1073741824"},
		{"l7.maxTransactions", "l7:\n  maxTransactions: 2000000000\n", "4096"},
		{"l7.maxHTTPValsBytes", "l7:\n  maxHTTPValsBytes: 2000000000\n", "65535"},
		{"l7.pendingEvents", "l7:\n  pendingEvents: 2000000000\n", "1048576"},
	} {
		_, err := Load(writeConfig(t, "nodeName: n\n"+tc.yaml))
		if !slices.Contains(confutil.Fields(err), tc.field) || !strings.Contains(err.Error(), ".."+tc.bound+", got") {
			t.Errorf("%s: want an error stating the bound %s, got %v", tc.field, tc.bound, err)
		}
	}
}

// Issue 9 item 11: the agent died with "out of memory" allocating the
// export buffer.
func TestIssue9HugeBufferRecordsFailsAtStartNamingTheField(t *testing.T) {
	_, err := Load(writeConfig(t, "nodeName: n\nexport:\n  bufferRecords: 2000000000\n"))
	if err == nil || !strings.Contains(err.Error(), "export.bufferRecords: must be within 1..1000000, got 2000000000") {
		t.Errorf("err = %v", err)
	}
}

// Issue 9 item 13: YAML 1.1 read `nodeName: no` as the boolean false,
// exported as node "false".
func TestIssue9NodeNameNoStaysNo(t *testing.T) {
	for _, name := range []string{"no", "off", "yes", "1.10", "0x1F", "~x"} {
		cfg, err := Load(writeConfig(t, "nodeName: "+name+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.NodeName != name {
			t.Errorf("nodeName: %s read as %q", name, cfg.NodeName)
		}
	}
}

// Issue 9 item 13: the limit was reported by pkg/l7 under its Go name
// MaxHTTPBytes.
func TestIssue9MaxHTTPValsBytesErrorNamesTheYAMLKey(t *testing.T) {
	_, err := Load(writeConfig(t, "nodeName: n\nl7:\n  maxHTTPValsBytes: 100000\n"))
	if err == nil || !strings.Contains(err.Error(), "l7.maxHTTPValsBytes: must be within 1..65535, got 100000") || strings.Contains(err.Error(), "MaxHTTPBytes") {
		t.Errorf("err = %v", err)
	}
}

func TestEVEBufferSmallerThanALineIsRefusedNamingBothFields(t *testing.T) {
	_, err := Load(writeConfig(t, "nodeName: n\nl7:\n  eve:\n    maxLineBytes: 1048576\n    maxBufferedBytes: 65536\n"))
	if !slices.Contains(confutil.Fields(err), "l7.eve.maxBufferedBytes") || !strings.Contains(err.Error(), "l7.eve.maxLineBytes") {
		t.Errorf("want an error on l7.eve.maxBufferedBytes naming l7.eve.maxLineBytes, got %v", err)
	}
}

// Found by the chart's test: Default's two *bool shared one variable, so
// `enableAccounting: false` (what the chart writes) also turned
// conntrack.events off, and counters.source ebpf failed to load.
func TestEnableAccountingOffLeavesEventsOn(t *testing.T) {
	cfg, err := Load(writeConfig(t, "nodeName: n\ncounters:\n  source: ebpf\nconntrack:\n  enableAccounting: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	if *cfg.Conntrack.EnableAccounting || !*cfg.Conntrack.Events {
		t.Errorf("enableAccounting %v, events %v; want false, true", *cfg.Conntrack.EnableAccounting, *cfg.Conntrack.Events)
	}
	if d := Default(); !*d.Conntrack.Events || !*d.Conntrack.EnableAccounting {
		t.Error("Default changed by an earlier Load")
	}
}
