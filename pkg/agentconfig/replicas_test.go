package agentconfig

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/confutil"
)

func TestReplicaListReplacesTheDefaultCollector(t *testing.T) {
	cfg, err := Load(writeConfig(t, "nodeName: n\nexport:\n  collectors: [\"a:4739\", \"10.0.0.2:4739\"]\n  failoverAfter: 3s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Export.Collector != "" || !reflect.DeepEqual(cfg.Export.Collectors, []string{"a:4739", "10.0.0.2:4739"}) {
		t.Errorf("collector %q, collectors %q", cfg.Export.Collector, cfg.Export.Collectors)
	}
	if cfg.Export.FailoverAfter.D() != 3*time.Second || cfg.Export.ResolveInterval.D() != 30*time.Second {
		t.Errorf("failoverAfter %s, resolveInterval %s", cfg.Export.FailoverAfter, cfg.Export.ResolveInterval)
	}

	cfg, err = Load(writeConfig(t, "nodeName: n\nexport:\n  collectorDNS: flowlens-aggregator.flowlens.svc:4739\n  resolveInterval: 5s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Export.Collector != "" || cfg.Export.CollectorDNS != "flowlens-aggregator.flowlens.svc:4739" ||
		cfg.Export.ResolveInterval.D() != 5*time.Second || cfg.Export.FailoverAfter.D() != 15*time.Second {
		t.Errorf("export %+v", cfg.Export)
	}

	// Without either, the single default collector, as before.
	cfg, err = Load(writeConfig(t, "nodeName: n\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Export.Collector != "127.0.0.1:4739" || cfg.Export.Collectors != nil || cfg.Export.CollectorDNS != "" {
		t.Errorf("defaults: %+v", cfg.Export)
	}
}

func TestInvalidReplicaConfigNamesTheField(t *testing.T) {
	for _, tc := range []struct{ name, yaml, field string }{
		{"collector and collectors", "export:\n  collector: a:1\n  collectors: [\"b:1\"]\n", "export.collectors"},
		{"collectors and dns", "export:\n  collectors: [\"b:1\"]\n  collectorDNS: s:1\n", "export.collectors"},
		{"collector and dns", "export:\n  collector: a:1\n  collectorDNS: s:1\n", "export.collectors"},
		{"replica without port", "export:\n  collectors: [\"a:1\", \"b\"]\n", "export.collectors[1]"},
		{"replica twice", "export:\n  collectors: [\"a:1\", \"b:2\", \"a:1\"]\n", "export.collectors[2]"},
		{"dns without port", "export:\n  collectorDNS: svc\n", "export.collectorDNS"},
		{"dns without name", "export:\n  collectorDNS: \":4739\"\n", "export.collectorDNS"},
		{"zero failover", "export:\n  collectors: [\"a:1\"]\n  failoverAfter: 0s\n", "export.failoverAfter"},
		{"zero reconnect cap", "export:\n  collectors: [\"a:1\"]\n  reconnectMax: 0s\n", "export.reconnectMax"},
		{"negative resolve interval", "export:\n  collectorDNS: s:1\n  resolveInterval: -1s\n", "export.resolveInterval"},
		{"empty collector", "export:\n  collector: \"\"\n", "export.collector"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, "nodeName: n\n"+tc.yaml))
			if !slices.Contains(confutil.Fields(err), tc.field) {
				t.Errorf("want an error on %s, got %v", tc.field, err)
			}
		})
	}
}

// A --collector flag given with a file that lists replicas is a conflict,
// not a silent choice of one of them.
func TestCollectorFlagOverReplicaListIsRefused(t *testing.T) {
	cfg, err := Load(writeConfig(t, "nodeName: n\nexport:\n  collectors: [\"a:1\", \"b:1\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Export.Collector = "c:1"
	if err := cfg.Finish(); err == nil || !strings.Contains(err.Error(), "export.collectors") {
		t.Errorf("Finish = %v, want the conflict named", err)
	}
}

// Every replica's exporter allocates bufferRecords records: the list is
// bounded like bufferRecords itself.
func TestTooManyCollectorsNamesTheField(t *testing.T) {
	list := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "\"10.0.%d.%d:4739\",", i/256, i%256)
		}
		return "nodeName: n\nexport:\n  collectors: [" + strings.TrimSuffix(b.String(), ",") + "]\n"
	}
	cfg, err := Load(writeConfig(t, list(MaxCollectors)))
	if err != nil || len(cfg.Export.Collectors) != MaxCollectors {
		t.Fatalf("%d collectors: %v", MaxCollectors, err)
	}
	_, err = Load(writeConfig(t, list(MaxCollectors+1)))
	if !slices.Contains(confutil.Fields(err), "export.collectors") {
		t.Errorf("%d collectors: want an error on export.collectors, got %v", MaxCollectors+1, err)
	}
}
