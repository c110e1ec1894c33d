//go:build integration

package packetdrops

import (
	"testing"
)

// TestLoadAndAttach loads the program on this kernel (the verifier accepts
// it or the test fails with its log), attaches it to tp_btf/kfree_skb,
// and checks the object holds only the program New loads and that the
// kernel's reason enum was read.
func TestLoadAndAttach(t *testing.T) {
	d, err := New(Config{}, nil)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer d.Close()
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Programs) != 1 || spec.Programs[bpfProgKfreeSkbDrop] == nil {
		t.Errorf("object programs %v, want only %s", spec.Programs, bpfProgKfreeSkbDrop)
	}
	if d.objs.KfreeSkbDrop == nil || d.lnk == nil {
		t.Fatal("program not loaded or not attached")
	}
	for _, want := range []string{"NETFILTER_DROP", "NO_SOCKET", "NOT_SPECIFIED"} {
		if _, ok := d.names.byName[want]; !ok {
			t.Errorf("reason %s not read from the kernel's BTF", want)
		}
	}
	if d.names.name(1) != "CONSUMED" {
		t.Errorf("reason 1 named %q, want CONSUMED (SKB_CONSUMED)", d.names.name(1))
	}
	if err := d.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}
