package inventory

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Issue 9 item 13: read as YAML 1.1, `version: 1.10` became the label
// "1.1" and a workload named `no` became "false".
func TestIssue9LabelsAndNamesKeepTheirLiteralText(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.yaml")
	body := "groups:\n- name: off\nentries:\n- name: no\n  group: off\n  node: yes\n  ips: [10.0.0.1]\n  labels: {version: 1.10, enabled: true, build: 010, rev: 1e3}\n"
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := load(path, "h")
	if err != nil {
		t.Fatal(err)
	}
	e, ok := p.entries["off/no"]
	if !ok {
		t.Fatalf("entry off/no not found; entries %v", p.entries)
	}
	if e.pod.Name != "no" || e.pod.Namespace != "off" || e.pod.Node != "yes" {
		t.Errorf("pod = %+v, want name no, namespace off, node yes", e.pod)
	}
	for _, want := range []string{`"version":"1.10"`, `"enabled":"true"`, `"build":"010"`, `"rev":"1e3"`} {
		if !strings.Contains(e.pod.Labels, want) {
			t.Errorf("labels %s lack %s", e.pod.Labels, want)
		}
	}
}

func TestInventoryParseErrorsNameThePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.yaml")
	if err := os.WriteFile(path, []byte("entries:\n- name: a\n  ips: [10.0.0.1]\n  labels: [x]\n  nod: h\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := load(path, "h")
	for _, want := range []string{"entries[0].labels: cannot read a list", "entries[0].nod: unknown option"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to contain %q", err, want)
		}
	}
}
