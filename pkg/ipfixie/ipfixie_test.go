package ipfixie

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
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
			// The other family's addresses, ClusterIP, Service IP and proxy SNAT IP.
			if len(tc.tmpl.Elements) != len(FlowIEs)-5 {
				t.Errorf("%d elements, want every IE but the other family's five", len(tc.tmpl.Elements))
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

func TestMillisecondTimesEncodeTruncatedAndWinOverSecondsWhenDecoded(t *testing.T) {
	v4, _, err := FlowTemplates(256, 257)
	if err != nil {
		t.Fatal(err)
	}
	const start = int64(1_763_700_000_123_456_789)
	r := flow.Record{EndReason: flow.EndOfFlow}
	r.StartNanos, r.StopNanos, r.ExportNanos = start, start+2_700_000, start+9e9 // a 2.7 ms connection
	data := v4.AppendData(nil, &r)
	got := map[string]uint64{}
	off := 0
	for _, e := range v4.Elements {
		n := int(e.Length)
		if e.Length == VariableLength {
			n = 1 + int(data[off]) // every string is short here
		} else if e.Type == DateTimeSeconds || e.Type == DateTimeMilliseconds {
			var v uint64
			for _, c := range data[off : off+n] {
				v = v<<8 | uint64(c)
			}
			got[e.Name] = v
		}
		off += n
	}
	want := map[string]uint64{
		"flowStartSeconds": 1_763_700_000, "flowEndSeconds": 1_763_700_000,
		"flowStartMilliseconds": 1_763_700_000_123, "flowEndMilliseconds": 1_763_700_000_126,
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s = %d on the wire, want %d", name, got[name], w)
		}
	}

	set := func(fb *FlowBuilder, name string, v uint64) {
		e, ok := LookupName(name, EnterpriseIANA)
		if !ok {
			t.Fatalf("%s not in the registry", name)
		}
		if !fb.Set(&e, &Value{Uint: v}) {
			t.Fatalf("%s not accepted by FlowBuilder", name)
		}
	}
	decode := func(order []string) flow.Record {
		var fb FlowBuilder
		e, _ := LookupName("flowEndReason", EnterpriseIANA)
		fb.Set(&e, &Value{Uint: uint64(flow.EndOfFlow)})
		for _, name := range order {
			set(&fb, name, want[name])
		}
		return fb.Record()
	}
	for _, order := range [][]string{
		{"flowStartSeconds", "flowEndSeconds", "flowStartMilliseconds", "flowEndMilliseconds"},
		{"flowStartMilliseconds", "flowEndMilliseconds", "flowStartSeconds", "flowEndSeconds"},
	} {
		d := decode(order)
		if d.StartNanos != 1_763_700_000_123e6 || d.StopNanos != 1_763_700_000_126e6 || d.ExportNanos != d.StopNanos {
			t.Errorf("fields in order %v: start %d stop %d export %d, want the milliseconds", order, d.StartNanos, d.StopNanos, d.ExportNanos)
		}
	}
	// An exporter that sends seconds only (go-ipfix's default, older
	// flowlens agents) is still decoded, to the second.
	d := decode([]string{"flowStartSeconds", "flowEndSeconds"})
	if d.StartNanos != 1_763_700_000e9 || d.StopNanos != 1_763_700_000e9 || d.ExportNanos != d.StopNanos {
		t.Errorf("seconds only: start %d stop %d export %d, want whole seconds", d.StartNanos, d.StopNanos, d.ExportNanos)
	}
}

// docs/ipfix-elements.md lists the flow record's IEs; this keeps the list
// equal to FlowIEs, order included.
func TestFlowIEsMatchTheDocumentation(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "ipfix-elements.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| (\\d+) \\| `(\\w+)` \\| (\\d+) \\| (\\d+) \\| (\\w+) \\| (both|IPv4|IPv6) \\|")
	var got, want []string
	for _, m := range row.FindAllSubmatch(doc, -1) {
		got = append(got, fmt.Sprintf("%s %s %s/%s %s %s", m[1], m[2], m[3], m[4], strings.ToLower(string(m[5])), m[6]))
	}
	typeNames := map[DataType]string{
		Unsigned8: "unsigned8", Unsigned16: "unsigned16", Unsigned64: "unsigned64", String: "string",
		DateTimeSeconds: "datetimeseconds", DateTimeMilliseconds: "datetimemilliseconds",
		IPv4Address: "ipv4address", IPv6Address: "ipv6address",
	}
	for i := range FlowIEs {
		e, err := FlowIEs[i].element()
		if err != nil {
			t.Fatal(err)
		}
		fam := map[Family]string{BothFamilies: "both", IPv4Only: "IPv4", IPv6Only: "IPv6"}[FlowIEs[i].Family]
		want = append(want, fmt.Sprintf("%d %s %d/%d %s %s", i+1, e.Name, e.Enterprise, e.ID, typeNames[e.Type], fam))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("docs list\n%s\nFlowIEs are\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Antrea sends 0.0.0.0 and port 0 for a connection without source NAT; a
// receiver must not take the unspecified address for a translation, nor
// keep a port that goes with no address.
func TestProxySnatDecodesOnlyARealAddress(t *testing.T) {
	build := func(addr string, port uint64) flow.Record {
		var fb FlowBuilder
		name := "proxySnatIPv4"
		if netip.MustParseAddr(addr).Is6() {
			name = "proxySnatIPv6"
		}
		a, _ := LookupName(name, EnterpriseAntrea)
		p, _ := LookupName("proxySnatPort", EnterpriseAntrea)
		if !fb.Set(&a, &Value{Addr: netip.MustParseAddr(addr)}) || !fb.Set(&p, &Value{Uint: port}) {
			t.Fatalf("FlowBuilder ignores %s or proxySnatPort", name)
		}
		return fb.Record()
	}
	for _, tc := range []struct {
		addr string
		port uint64
		want netip.AddrPort
		ok   bool
	}{
		{"172.18.0.3", 61017, netip.MustParseAddrPort("172.18.0.3:61017"), true},
		{"fd00:172:18::3", 1025, netip.MustParseAddrPort("[fd00:172:18::3]:1025"), true},
		{"0.0.0.0", 0, netip.AddrPort{}, false},
		{"::", 0, netip.AddrPort{}, false},
		{"0.0.0.0", 5, netip.AddrPort{}, false},
	} {
		r := build(tc.addr, tc.port)
		got, ok := r.ProxySnat()
		if got != tc.want || ok != tc.ok || (!ok && r.ProxySnatPort != 0) {
			t.Errorf("%s port %d: ProxySnat() = %v, %v (port field %d); want %v, %v", tc.addr, tc.port, got, ok, r.ProxySnatPort, tc.want, tc.ok)
		}
	}
}

func TestClusterIDIsAStringIEBothWays(t *testing.T) {
	v4, _, err := FlowTemplates(256, 257)
	if err != nil {
		t.Fatal(err)
	}
	r := flow.Record{ClusterID: "5b9c1f0e-6a8e-4d2b-b7a5-0f3e2d1c4b5a"}
	if b := v4.AppendData(nil, &r); !strings.HasSuffix(string(b), "\x24"+r.ClusterID) {
		t.Errorf("clusterId is not the last field, length-prefixed: % x", b[len(b)-40:])
	}
	e, ok := LookupName("clusterId", EnterpriseAntrea)
	if !ok || e.ID != 158 || e.Type != String {
		t.Fatalf("clusterId = %+v, %v; want Antrea's 56506/158 string", e, ok)
	}
	var fb FlowBuilder
	fb.Set(&e, &Value{Str: "prod-eu-1"})
	if got := fb.Record().ClusterID; got != "prod-eu-1" {
		t.Errorf("decoded ClusterID %q", got)
	}
}
