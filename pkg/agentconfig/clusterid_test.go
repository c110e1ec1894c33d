package agentconfig

import (
	"strings"
	"testing"
)

func TestClusterIDIsReadAndValidated(t *testing.T) {
	cfg, err := Load(writeConfig(t, "nodeName: n\nclusterID: prod-eu-1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClusterID != "prod-eu-1" {
		t.Errorf("ClusterID = %q, want prod-eu-1", cfg.ClusterID)
	}
	if def := Default(); def.ClusterID != "" {
		t.Errorf("default ClusterID %q, want empty (kube-system UID or none)", def.ClusterID)
	}
	for _, bad := range []string{
		`"` + strings.Repeat("x", MaxClusterIDBytes+1) + `"`,
		`" prod"`,
		`"prod\tone"`,
		`"a\u0007b"`,
	} {
		_, err := Load(writeConfig(t, "nodeName: n\nclusterID: "+bad+"\n"))
		if err == nil || !strings.Contains(err.Error(), "clusterID") {
			t.Errorf("clusterID: %s: error %v, want one naming clusterID", bad, err)
		}
	}
}
