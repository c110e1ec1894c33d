//go:build integration

package bpfcounters

import (
	"testing"
)

// TestLoadAllPrograms loads every program of the object on this kernel:
// the verifier accepts them or the test fails with its log.
func TestLoadAllPrograms(t *testing.T) {
	c, err := New(Config{}, nil)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer c.Close()
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	for name := range spec.Programs {
		switch name {
		case bpfProgFlowFromPod:
			if c.objs.FlowFromPod == nil {
				t.Errorf("%s not loaded", name)
			}
		case bpfProgFlowToPod:
			if c.objs.FlowToPod == nil {
				t.Errorf("%s not loaded", name)
			}
		default:
			t.Errorf("program %s in the object is not loaded by New", name)
		}
	}
	if len(spec.Programs) != 2 {
		t.Errorf("object has %d programs, want 2", len(spec.Programs))
	}
}
