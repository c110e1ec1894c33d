package agentconfig

import (
	"reflect"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/confutil"
)

func TestCollectorKind(t *testing.T) {
	for _, tc := range []struct {
		yaml, want string
	}{
		{"", CollectorFlowlens},
		{"export:\n  collectorKind: flowlens\n", CollectorFlowlens},
		{"kubernetes:\n  enabled: true\nexport:\n  collectorKind: antrea\n", CollectorAntrea},
		// Any case, like export.transport; normalised at load.
		{"kubernetes:\n  enabled: true\nexport:\n  collectorKind: Antrea\n", CollectorAntrea},
		{"export:\n  collectorKind: FLOWLENS\n", CollectorFlowlens},
	} {
		cfg, err := Load(writeConfig(t, "nodeName: n\n"+tc.yaml))
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if cfg.Export.CollectorKind != tc.want {
			t.Errorf("%q: collectorKind %q, want %q", tc.yaml, cfg.Export.CollectorKind, tc.want)
		}
	}
}

func TestBadCollectorKindNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		fields     []string
		mention    string
	}{
		// The error quotes the value as written.
		{"unknown kind", "export:\n  collectorKind: IPFIX\n", []string{"export.collectorKind"}, `want "flowlens" or "antrea", got "IPFIX"`},
		{"empty", "export:\n  collectorKind: \"\"\n", []string{"export.collectorKind"}, `got ""`},
		// Without pod names every record would be skipped in this mode.
		{"antrea without context", "export:\n  collectorKind: antrea\n", []string{"export.collectorKind"}, "needs kubernetes.enabled or inventory.file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, "nodeName: n\n"+tc.yaml))
			if got := confutil.Fields(err); !reflect.DeepEqual(got, tc.fields) {
				t.Fatalf("fields %v, want %v (err %v)", got, tc.fields, err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not say %s", err, tc.mention)
			}
		})
	}
}

// The enterprise elements (DNS/TLS details, workloads) follow the collector
// unless the file says otherwise: flowlens-aggregator reads them, Antrea's
// Flow Aggregator has no use for them.
func TestL7DetailElementsFollowTheCollectorKind(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want bool
	}{
		{"", true},
		{"kubernetes:\n  enabled: true\nexport:\n  collectorKind: antrea\n", false},
		{"export:\n  l7DetailElements: false\n", false},
		{"kubernetes:\n  enabled: true\nexport:\n  collectorKind: antrea\n  l7DetailElements: true\n", true},
	} {
		cfg, err := Load(writeConfig(t, "nodeName: n\n"+tc.yaml))
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if got := *cfg.Export.L7DetailElements; got != tc.want {
			t.Errorf("%q: l7DetailElements %v, want %v", tc.yaml, got, tc.want)
		}
	}
}

// The health and destination-name elements follow the collector unless
// the file says otherwise, independently of l7DetailElements.
func TestHealthElementsFollowTheCollectorKind(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want bool
	}{
		{"", true},
		{"kubernetes:\n  enabled: true\nexport:\n  collectorKind: antrea\n", false},
		{"export:\n  healthElements: false\n", false},
		{"export:\n  l7DetailElements: false\n", true},
		{"kubernetes:\n  enabled: true\nexport:\n  collectorKind: antrea\n  healthElements: true\n", true},
	} {
		cfg, err := Load(writeConfig(t, "nodeName: n\n"+tc.yaml))
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if got := *cfg.Export.HealthElements; got != tc.want {
			t.Errorf("%q: healthElements %v, want %v", tc.yaml, got, tc.want)
		}
	}
}
