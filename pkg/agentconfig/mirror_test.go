package agentconfig

import (
	"reflect"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/confutil"
)

func TestMirrorEnabledDefaultFollowsL7AndKubernetes(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		want bool
	}{
		{"neither", "", false},
		{"kubernetes only", "kubernetes: {enabled: true}\n", false},
		{"l7 with inventory", "inventory: {file: %INV%}\nl7: {eve: {source: file, path: /x}}\n", false},
		{"l7 and kubernetes", "kubernetes: {enabled: true}\nl7: {eve: {source: unix_stream}}\n", true},
		{"explicitly off", "kubernetes: {enabled: true}\nl7: {eve: {source: unix_stream}}\nmirror: {enabled: false}\n", false},
		{"explicitly on without l7", "kubernetes: {enabled: true}\nmirror: {enabled: true}\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv := writeConfig(t, "[]\n")
			body := strings.ReplaceAll(tc.body, "%INV%", inv)
			cfg, err := Load(writeConfig(t, body))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Mirror.Enabled == nil || *cfg.Mirror.Enabled != tc.want {
				t.Errorf("mirror.enabled = %v, want %v", cfg.Mirror.Enabled, tc.want)
			}
		})
	}
}

func TestMirrorInvalidValuesNameTheField(t *testing.T) {
	for _, tc := range []struct {
		body   string
		fields []string
	}{
		{"mirror: {enabled: true}\n", []string{"mirror.enabled"}},
		{"mirror: {mechanism: ebpf}\n", []string{"mirror.mechanism"}},
		{"mirror: {captureInterface: eth9}\n", []string{"mirror.captureInterface"}},
		{"mirror: {peerInterface: flc0}\n", []string{"mirror.peerInterface"}},
		{"mirror: {peerInterface: flc0123456789abcdef}\n", []string{"mirror.peerInterface"}},
		{"mirror: {peerInterface: \"flc/1\"}\n", []string{"mirror.peerInterface"}},
		{"mirror: {reconcileInterval: 0s}\n", []string{"mirror.reconcileInterval"}},
	} {
		_, err := Load(writeConfig(t, tc.body))
		if err == nil {
			t.Errorf("%q: loaded, want an error", tc.body)
			continue
		}
		if got := confutil.Fields(err); !reflect.DeepEqual(got, tc.fields) {
			t.Errorf("%q: error fields %q, want %q (err: %v)", tc.body, got, tc.fields, err)
		}
	}
}

func TestMirrorMechanismCaseInsensitive(t *testing.T) {
	cfg, err := Load(writeConfig(t, "mirror: {mechanism: TCX}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mirror.Mechanism != MirrorTCX {
		t.Errorf("mechanism %q, want %q", cfg.Mirror.Mechanism, MirrorTCX)
	}
}
