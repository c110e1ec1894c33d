package ipfixie

import (
	"testing"

	"github.com/vmware/go-ipfix/pkg/registry"

	"github.com/flowlens/flowlens/pkg/flow"
)

func TestWorkloadElementsAreDefinedHereWithIDsAfterTheL7Details(t *testing.T) {
	ids := map[uint16]string{}
	for _, d := range L7Details() {
		ids[d.ID] = d.Name
	}
	for _, w := range WorkloadElements() {
		if prev, dup := ids[w.ID]; dup {
			t.Errorf("id %d used by %s and %s", w.ID, prev, w.Name)
		}
		ids[w.ID] = w.Name
		if ie, err := registry.GetInfoElementFromID(w.ID, EnterprisePlaceholder); err == nil {
			t.Errorf("go-ipfix's registry has %d/%d (%s): Define would shadow it", EnterprisePlaceholder, w.ID, ie.Name)
		}
		if e, ok := Lookup(EnterprisePlaceholder, w.ID); !ok || e.Name != w.Name || e.Type != String || e.Length != VariableLength {
			t.Errorf("Lookup(32473, %d) = %+v, %v", w.ID, e, ok)
		}
	}
}

// Off, the default templates carry no workload IE; received, each IE fills
// its end's field; encoded, each is a variable-length string of its field.
func TestWorkloadElementsAreOptionalAndFillTheirEnd(t *testing.T) {
	off4, _, err := NewFlowTemplates(TemplateOptions{IDv4: 256, IDv6: 257})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range off4.Elements {
		if e.Enterprise == EnterprisePlaceholder {
			t.Errorf("default template carries %s", e.Name)
		}
	}
	v4, _, err := NewFlowTemplates(TemplateOptions{IDv4: 256, IDv6: 257, L7Details: true})
	if err != nil {
		t.Fatal(err)
	}
	base := len(v4.AppendData(nil, &flow.Record{}))
	for _, w := range WorkloadElements() {
		t.Run(w.Name, func(t *testing.T) {
			e, _ := Lookup(EnterprisePlaceholder, w.ID)
			var fb FlowBuilder
			if !fb.Set(&e, &Value{Str: "v-" + w.Name}) {
				t.Fatalf("FlowBuilder ignores %s", w.Name)
			}
			got := fb.Record()
			var want flow.Record
			*w.Field(&want) = "v-" + w.Name
			if got.Source != want.Source || got.Destination != want.Destination {
				t.Errorf("endpoints = %+v -> %+v, want %+v -> %+v", got.Source, got.Destination, want.Source, want.Destination)
			}
			var r flow.Record
			*w.Field(&r) = "abcd"
			if n := len(v4.AppendData(nil, &r)); n != base+4 {
				t.Errorf("record %d bytes with a 4-byte %s, want %d", n, w.Name, base+4)
			}
		})
	}
}
