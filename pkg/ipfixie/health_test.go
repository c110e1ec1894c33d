package ipfixie

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vmware/go-ipfix/pkg/registry"

	"github.com/flowlens/flowlens/pkg/flow"
)

func healthRecord() flow.Record {
	r := flow.Record{EndReason: flow.EndActiveTimeout, DestinationName: "api.example.com"}
	r.Tuple = flow.NewTuple(netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("93.184.216.34"), 40000, 443, flow.ProtoTCP)
	r.Health = flow.Health{
		RTTMinMicros: 101, RTTAvgMicros: 202, RTTMaxMicros: 303, RTTSamples: 4,
		FwdRetransmits: 5, RevRetransmits: 6, FwdResets: 7, RevResets: 8,
		EstablishMicros: 9, ZeroWindows: 10, FwdDrops: 11, RevDrops: 1<<32 - 1,
		DropReason: "NETFILTER_DROP",
	}
	return r
}

// decodeData walks one data record of t as a collector would and feeds
// every field to a FlowBuilder.
func decodeData(t *testing.T, tmpl *Template, data []byte) flow.Record {
	t.Helper()
	var fb FlowBuilder
	off := 0
	for _, e := range tmpl.Elements {
		n := int(e.Length)
		if e.Length == VariableLength {
			n = int(data[off])
			off++
			if n == 255 {
				n = int(binary.BigEndian.Uint16(data[off:]))
				off += 2
			}
		}
		b := data[off : off+n]
		off += n
		var v Value
		switch e.Type {
		case String:
			v.Str = string(b)
		case IPv4Address, IPv6Address:
			v.Addr, _ = netip.AddrFromSlice(b)
		default:
			for _, c := range b {
				v.Uint = v.Uint<<8 | uint64(c)
			}
		}
		fb.Set(&e, &v)
	}
	if off != len(data) {
		t.Fatalf("decoded %d of %d bytes", off, len(data))
	}
	return fb.Record()
}

func TestHealthElementsRoundTripThroughBothTemplates(t *testing.T) {
	v4, v6, err := NewFlowTemplates(TemplateOptions{IDv4: 256, IDv6: 257, L7Details: true, Health: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tmpl := range []*Template{v4, v6} {
		r := healthRecord()
		if tmpl.IPv6 {
			r.Tuple = flow.NewTuple(netip.MustParseAddr("fd00::2"), netip.MustParseAddr("2001:db8::1"), 40000, 443, flow.ProtoTCP)
		}
		got := decodeData(t, tmpl, tmpl.AppendData(nil, &r))
		if got.Health != r.Health || got.DestinationName != r.DestinationName {
			t.Errorf("template %d: decoded %+v %q, sent %+v %q", tmpl.ID, got.Health, got.DestinationName, r.Health, r.DestinationName)
		}
	}
}

func TestHealthElementsAreOptional(t *testing.T) {
	for _, o := range []TemplateOptions{{IDv4: 256, IDv6: 257}, {IDv4: 256, IDv6: 257, L7Details: true}} {
		v4, _, err := NewFlowTemplates(o)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range v4.Elements {
			for _, h := range HealthElements() {
				if e.Name == h.Name {
					t.Errorf("options %+v: template carries %s", o, e.Name)
				}
			}
		}
	}
	// On without the L7 details: the health IEs follow FlowIEs directly.
	v4, _, err := NewFlowTemplates(TemplateOptions{IDv4: 256, IDv6: 257, Health: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := HealthElements()
	tail := v4.Elements[len(v4.Elements)-len(hs):]
	for i, h := range hs {
		if tail[i].Name != h.Name || tail[i].Enterprise != h.Enterprise || tail[i].ID != h.ID {
			t.Errorf("element %d from the end: %+v, want %s (%d/%d)", len(hs)-i, tail[i], h.Name, h.Enterprise, h.ID)
		}
	}
	if n := len(v4.Elements); n != len(FlowIEs)-5+len(hs) {
		t.Errorf("%d elements, want FlowIEs' IPv4 ones and %d health IEs", n, len(hs))
	}
}

// The IANA elements are the registry's own; the placeholder ones have ids
// of their own after the workload elements and are nobody else's.
func TestHealthElementIDs(t *testing.T) {
	ids := map[uint16]string{}
	for _, d := range L7Details() {
		ids[d.ID] = d.Name
	}
	for _, w := range WorkloadElements() {
		ids[w.ID] = w.Name
	}
	for _, h := range HealthElements() {
		if (h.U32 == nil) == (h.Str == nil) {
			t.Errorf("%s: exactly one of U32 and Str must be set", h.Name)
		}
		if h.Enterprise != EnterprisePlaceholder {
			ie, err := registry.GetInfoElementFromID(h.ID, h.Enterprise)
			if err != nil || ie.Name != h.Name || DataType(ie.DataType) != h.Type {
				t.Errorf("%s: go-ipfix's registry has %d/%d as %+v (%v)", h.Name, h.Enterprise, h.ID, ie, err)
			}
			continue
		}
		if prev, dup := ids[h.ID]; dup {
			t.Errorf("id %d used by %s and %s", h.ID, prev, h.Name)
		}
		ids[h.ID] = h.Name
		if h.ID <= 13 {
			t.Errorf("%s: id %d, want after the workload elements (13)", h.Name, h.ID)
		}
		if ie, err := registry.GetInfoElementFromID(h.ID, EnterprisePlaceholder); err == nil {
			t.Errorf("go-ipfix's registry has %d/%d (%s): Define would shadow it", EnterprisePlaceholder, h.ID, ie.Name)
		}
		if e, ok := Lookup(EnterprisePlaceholder, h.ID); !ok || e.Name != h.Name || e.Type != h.Type {
			t.Errorf("Lookup(32473, %d) = %+v, %v", h.ID, e, ok)
		}
	}
}

// A full-length unsigned64 from another exporter that does not fit the
// field saturates instead of wrapping to a small count.
func TestHealthDropCountSaturates(t *testing.T) {
	e, ok := LookupName("droppedPacketDeltaCount", EnterpriseIANA)
	if !ok {
		t.Fatal("droppedPacketDeltaCount not in the registry")
	}
	var fb FlowBuilder
	if !fb.Set(&e, &Value{Uint: 1<<32 + 5}) {
		t.Fatal("FlowBuilder ignores droppedPacketDeltaCount")
	}
	if got := fb.Record().Health.FwdDrops; got != 1<<32-1 {
		t.Errorf("FwdDrops = %d, want the uint32 maximum", got)
	}
}

// docs/ipfix-elements.md's table of these elements equals HealthElements.
func TestHealthElementsMatchTheDocumentation(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "ipfix-elements.md"))
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(doc), "## Network health and destination name elements")
	if i < 0 {
		t.Fatal("docs/ipfix-elements.md has no section \"Network health and destination name elements\"")
	}
	row := regexp.MustCompile("(?m)^\\| `(\\w+)` \\| (\\d+) \\| (\\d+) \\| (\\w+) \\|")
	var got, want []string
	for _, m := range row.FindAllSubmatch(doc[i:], -1) {
		got = append(got, fmt.Sprintf("%s %s/%s %s", m[1], m[2], m[3], strings.ToLower(string(m[4]))))
	}
	names := map[DataType]string{Unsigned32: "unsigned32", Unsigned64: "unsigned64", String: "string"}
	for _, h := range HealthElements() {
		want = append(want, fmt.Sprintf("%s %d/%d %s", h.Name, h.Enterprise, h.ID, names[h.Type]))
	}
	if len(got) < len(want) || strings.Join(got[:len(want)], "\n") != strings.Join(want, "\n") {
		t.Errorf("docs list\n%s\nHealthElements are\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
