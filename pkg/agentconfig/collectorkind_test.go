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
		{"export:\n  collectorKind: antrea\n", CollectorAntrea},
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
		// Values are exact: "Antrea" is refused rather than guessed at.
		{"unknown kind", "export:\n  collectorKind: ipfix\n", []string{"export.collectorKind"}, `want "flowlens" or "antrea", got "ipfix"`},
		{"wrong case", "export:\n  collectorKind: Antrea\n", []string{"export.collectorKind"}, `got "Antrea"`},
		{"empty", "export:\n  collectorKind: \"\"\n", []string{"export.collectorKind"}, `got ""`},
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
