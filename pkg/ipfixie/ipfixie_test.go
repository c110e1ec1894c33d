package ipfixie

import (
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
)

func TestFlowTemplatesResolveEveryIEOncePerFamily(t *testing.T) {
	v4, v6, err := FlowTemplates(256, 257)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		tmpl  *Template
		other string
	}{{"IPv4 template", v4, "IPv6"}, {"IPv6 template", v6, "IPv4"}} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]bool{}
			for _, e := range tc.tmpl.Elements {
				if seen[e.Name] {
					t.Errorf("%s twice", e.Name)
				}
				seen[e.Name] = true
				if strings.Contains(e.Name, tc.other) {
					t.Errorf("%s in the %s", e.Name, tc.name)
				}
				if e.Length == 0 {
					t.Errorf("%s has length 0", e.Name)
				}
			}
			if len(tc.tmpl.Elements) != len(FlowIEs)-4 {
				t.Errorf("%d elements, want every IE but the other family's four", len(tc.tmpl.Elements))
			}
		})
	}
}

func TestDataRecordLengthMatchesTheTemplate(t *testing.T) {
	v4, v6, err := FlowTemplates(256, 257)
	if err != nil {
		t.Fatal(err)
	}
	for _, tmpl := range []*Template{v4, v6} {
		var r flow.Record // empty strings: one length byte each
		want := 0
		for _, e := range tmpl.Elements {
			if e.Length == VariableLength {
				want++
			} else {
				want += int(e.Length)
			}
		}
		if got := len(tmpl.AppendData(nil, &r)); got != want {
			t.Errorf("template %d: record of %d bytes, template says %d", tmpl.ID, got, want)
		}
	}
}

func TestVariableLengthEncoding(t *testing.T) {
	cases := []struct {
		name    string
		n       int
		wantHdr []byte
	}{
		{"short value has a one-byte length", 254, []byte{254}},
		{"255 bytes switch to the three-byte form", 255, []byte{255, 0, 255}},
		{"long value", 1000, []byte{255, 3, 232}},
		{"over 65535 bytes is cut to fit the length field", 70000, []byte{255, 255, 255}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := appendVarLen(nil, strings.Repeat("x", tc.n))
			if string(b[:len(tc.wantHdr)]) != string(tc.wantHdr) {
				t.Errorf("header % x, want % x", b[:len(tc.wantHdr)], tc.wantHdr)
			}
			if len(b) != len(tc.wantHdr)+min(tc.n, 65535) {
				t.Errorf("encoded %d bytes", len(b))
			}
		})
	}
}

func TestTemplateIDsMustBeDataSetIDs(t *testing.T) {
	if _, _, err := FlowTemplates(255, 256); err == nil {
		t.Error("template id 255 accepted; ids below 256 are set ids")
	}
	if _, _, err := FlowTemplates(300, 300); err == nil {
		t.Error("the same id for both templates accepted")
	}
}

func TestRegistryHasIANAReverseAndAntreaIEs(t *testing.T) {
	for _, tc := range []struct {
		name string
		ent  uint32
		id   uint16
	}{{"octetDeltaCount", EnterpriseIANA, 1}, {"reverseOctetDeltaCount", EnterpriseReverse, 1}, {"httpVals", EnterpriseAntrea, 156}} {
		e, ok := Lookup(tc.ent, tc.id)
		if !ok || e.Name != tc.name {
			t.Errorf("Lookup(%d, %d) = %+v, %v; want %s", tc.ent, tc.id, e, ok, tc.name)
		}
	}
}

func TestDefinedIEsNeedNoRegistryEntry(t *testing.T) {
	name := "exampleServerName"
	ies := append(append([]FlowIE(nil), FlowIEs...),
		definedStrIE(name, 32473, 5, func(r *flow.Record) *string { return &r.L7.TLSServerName }))
	v4, _, err := flowTemplates(ies, 256, 257)
	if err != nil {
		t.Fatal(err)
	}
	last := v4.Elements[len(v4.Elements)-1]
	if last.Name != name || last.Enterprise != 32473 || last.ID != 5 || last.Length != VariableLength {
		t.Errorf("defined element = %+v", last)
	}
	r := flow.Record{L7: flow.L7{TLSServerName: "example.org"}}
	if b := v4.AppendData(nil, &r); !strings.HasSuffix(string(b), "\x0bexample.org") {
		t.Errorf("record does not end with the defined IE's value: %q", b[len(b)-12:])
	}

	bad := append(append([]FlowIE(nil), FlowIEs...), FlowIE{Name: "noSuchElement", Enterprise: 32473})
	if _, _, err := flowTemplates(bad, 256, 257); err == nil || !strings.Contains(err.Error(), "noSuchElement") {
		t.Errorf("undefined IE outside the registry: err = %v, want one naming it", err)
	}
}
