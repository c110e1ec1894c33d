package ipfixie

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/vmware/go-ipfix/pkg/registry"

	"github.com/flowlens/flowlens/pkg/flow"
)

func TestL7DetailsAreOptionalInTheTemplates(t *testing.T) {
	details := L7Details()
	cases := []struct {
		name      string
		l7Details bool
		wantExtra int
	}{
		{"default templates are the Antrea set without enterprise-32473 IEs", false, 0},
		{"with L7Details the nine DNS/TLS IEs and the four workload IEs follow the Antrea set", true, len(details) + len(WorkloadElements())},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v4, v6, err := NewFlowTemplates(TemplateOptions{IDv4: 256, IDv6: 257, L7Details: tc.l7Details})
			if err != nil {
				t.Fatal(err)
			}
			for _, tmpl := range []*Template{v4, v6} {
				if got, want := len(tmpl.Elements), len(FlowIEs)-5+tc.wantExtra; got != want {
					t.Errorf("template %d: %d elements, want %d", tmpl.ID, got, want)
				}
				n32473 := 0
				for _, e := range tmpl.Elements {
					if e.Enterprise == EnterprisePlaceholder {
						n32473++
					}
				}
				if n32473 != tc.wantExtra {
					t.Errorf("template %d: %d enterprise-32473 IEs, want %d", tmpl.ID, n32473, tc.wantExtra)
				}
				extra := tmpl.Elements[len(tmpl.Elements)-tc.wantExtra:]
				type nameID struct {
					name string
					id   uint16
				}
				var order []nameID
				for _, d := range details {
					order = append(order, nameID{d.Name, d.ID})
				}
				for _, w := range WorkloadElements() {
					order = append(order, nameID{w.Name, w.ID})
				}
				for i, e := range extra {
					d := order[i]
					want := Element{Name: d.name, Enterprise: EnterprisePlaceholder, ID: d.id, Type: String, Length: VariableLength}
					if e != want {
						t.Errorf("template %d element %d = %+v, want %+v", tmpl.ID, len(tmpl.Elements)-tc.wantExtra+i, e, want)
					}
				}
			}
		})
	}
}

func TestFlowTemplatesStayTheAntreaSet(t *testing.T) {
	a4, a6, err := FlowTemplates(256, 257)
	if err != nil {
		t.Fatal(err)
	}
	b4, b6, err := NewFlowTemplates(TemplateOptions{IDv4: 256, IDv6: 257})
	if err != nil {
		t.Fatal(err)
	}
	if string(a4.AppendTemplateRecord(nil)) != string(b4.AppendTemplateRecord(nil)) ||
		string(a6.AppendTemplateRecord(nil)) != string(b6.AppendTemplateRecord(nil)) {
		t.Error("FlowTemplates differs from NewFlowTemplates without options")
	}
}

// The premise of Define: go-ipfix's registry does not know these elements,
// and they must not shadow one it knows.
func TestL7DetailsAreDefinedHereAndKnownByIDAndName(t *testing.T) {
	seen := map[uint16]string{}
	for _, d := range L7Details() {
		t.Run(d.Name, func(t *testing.T) {
			if prev, dup := seen[d.ID]; dup {
				t.Errorf("id %d used by %s and %s", d.ID, prev, d.Name)
			}
			seen[d.ID] = d.Name
			if ie, err := registry.GetInfoElementFromID(d.ID, EnterprisePlaceholder); err == nil {
				t.Errorf("go-ipfix's registry has %d/%d (%s): Define would shadow it", EnterprisePlaceholder, d.ID, ie.Name)
			}
			byID, ok := Lookup(EnterprisePlaceholder, d.ID)
			if !ok || byID.Name != d.Name || byID.Type != String || byID.Length != VariableLength {
				t.Errorf("Lookup(32473, %d) = %+v, %v", d.ID, byID, ok)
			}
			if byName, ok := LookupName(d.Name, EnterprisePlaceholder); !ok || byName.ID != d.ID {
				t.Errorf("LookupName(%s) = %+v, %v", d.Name, byName, ok)
			}
		})
	}
}

func TestL7DetailsTableCannotBeChangedThroughL7Details(t *testing.T) {
	ds := L7Details()
	ds[0].Name = "changed"
	if L7Details()[0].Name == "changed" {
		t.Error("L7Details returned the table itself")
	}
}

func TestL7DetailsFillFlowL7WhenReceived(t *testing.T) {
	for _, d := range L7Details() {
		t.Run(d.Name, func(t *testing.T) {
			e, _ := Lookup(EnterprisePlaceholder, d.ID)
			var fb FlowBuilder
			if !fb.Set(&e, &Value{Str: "v-" + d.Name}) {
				t.Fatalf("FlowBuilder ignores %s", d.Name)
			}
			r := fb.Record()
			var want flow.L7
			*d.Field(&want) = "v-" + d.Name
			if r.L7 != want {
				t.Errorf("L7 = %+v, want %+v", r.L7, want)
			}
		})
	}
}

func TestL7DetailsEncodeTheirFieldAsVariableLengthString(t *testing.T) {
	v4, _, err := NewFlowTemplates(TemplateOptions{IDv4: 256, IDv6: 257, L7Details: true})
	if err != nil {
		t.Fatal(err)
	}
	var r flow.Record
	base := len(v4.AppendData(nil, &r))
	for _, d := range L7Details() {
		t.Run(d.Name, func(t *testing.T) {
			var r flow.Record
			*d.Field(&r.L7) = "abc"
			if got := len(v4.AppendData(nil, &r)); got != base+3 {
				t.Errorf("record %d bytes with a 3-byte %s, want %d", got, d.Name, base+3)
			}
		})
	}
}

// docs/ipfix-elements.md documents the table; this keeps the two equal.
func TestL7DetailsMatchTheDocumentation(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "ipfix-elements.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `(\\w+)` \\| 32473 \\| (\\d+) \\| string \\|")
	documented := map[string]uint16{}
	for _, m := range row.FindAllSubmatch(doc, -1) {
		id, _ := strconv.Atoi(string(m[2]))
		documented[string(m[1])] = uint16(id)
	}
	details := L7Details()
	workload := WorkloadElements()
	// The string health elements (health_test.go checks their table).
	var healthStrings int
	for _, h := range HealthElements() {
		if h.Enterprise == EnterprisePlaceholder && h.Type == String {
			healthStrings++
			if id, ok := documented[h.Name]; !ok || id != h.ID {
				t.Errorf("%s (id %d): documented as id %d, %v", h.Name, h.ID, id, ok)
			}
		}
	}
	if want := len(details) + len(workload) + healthStrings; len(documented) != want {
		t.Errorf("docs list %d enterprise-32473 string elements, the tables %d", len(documented), want)
	}
	for _, d := range details {
		if id, ok := documented[d.Name]; !ok || id != d.ID {
			t.Errorf("%s (id %d): documented as id %d, %v", d.Name, d.ID, id, ok)
		}
	}
	for _, w := range workload {
		if id, ok := documented[w.Name]; !ok || id != w.ID {
			t.Errorf("%s (id %d): documented as id %d, %v", w.Name, w.ID, id, ok)
		}
	}
}
