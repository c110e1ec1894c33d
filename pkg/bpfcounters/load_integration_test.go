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
		case bpfProgFlowLookupBulk, bpfProgFlowDeleteBulk:
			// Optional where the kernel has no syscall programs (before
			// 5.14); this test's kernel has them.
			if mt, ok := c.table.(*mapTable); !ok || mt.bulk == nil {
				t.Errorf("%s not loaded", name)
			}
		default:
			t.Errorf("program %s in the object is not loaded by New", name)
		}
	}
	if len(spec.Programs) != 4 {
		t.Errorf("object has %d programs, want 4", len(spec.Programs))
	}
}
