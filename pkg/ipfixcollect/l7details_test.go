package ipfixcollect

import (
	"encoding/binary"
	"encoding/json"
	"net"
	"strings"
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipfixie"
)

// The DNS/TLS detail IEs are built here by hand, not by ipfixexport, so a
// mistake shared by both sides of the table cannot hide.
func TestL7DetailIEsDecodeByNameAndFillFlowL7(t *testing.T) {
	long := strings.Repeat("2001:db8::1,", 40) // over 254 bytes: three-byte length
	cases := []struct {
		name string
		want flow.L7
	}{
		{"DNS and TLS details", flow.L7{
			DNSQueryName: "web.shop.svc.cluster.local", DNSQueryType: "A", DNSResponseCode: "NXDOMAIN", DNSAnswers: "10.96.0.10",
			TLSServerName: "api.example.org", TLSVersion: "TLS 1.2", TLSJA3: "ja3", TLSJA3S: "ja3s", TLSJA4: "t13d1516h2_8daaf6152771_e5627efa2ab1",
		}},
		{"long answers", flow.L7{DNSQueryName: "many.example.org", DNSQueryType: "AAAA", DNSResponseCode: "NOERROR", DNSAnswers: long}},
		{"all empty", flow.L7{}},
	}
	// Template 300: addresses, packetDeltaCount, then ids 1..9 of 32473.
	fields := []spec{srcV4, dstV4, pktDelta4}
	for id := uint16(1); id <= 9; id++ {
		fields = append(fields, spec{32473, id, 65535})
	}
	values := func(l *flow.L7) []string {
		return []string{l.DNSQueryName, l.DNSQueryType, l.DNSResponseCode, l.DNSAnswers,
			l.TLSServerName, l.TLSVersion, l.TLSJA3, l.TLSJA3S, l.TLSJA4}
	}
	names := []string{"dnsQueryName", "dnsQueryType", "dnsResponseCode", "dnsAnswers",
		"tlsServerName", "tlsVersion", "tlsJA3", "tlsJA3S", "tlsJA4"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, reg, s, _ := run(t, TCP)
			conn, err := net.Dial("tcp", c.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			data := simpleData(1)
			for _, v := range values(&tc.want) {
				if len(v) < 255 {
					data = append(data, byte(len(v)))
				} else {
					data = binary.BigEndian.AppendUint16(append(data, 255), uint16(len(v)))
				}
				data = append(data, v...)
			}
			if _, err := conn.Write(newMsg(1).set(2, tmplRecord(300, fields...)).set(300, data).bytes()); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "one record", func() bool { return len(s.all()) == 1 })
			if v := counter(t, reg, "flowlens_ipfix_collector_errors_total", "malformed"); v != 0 {
				t.Errorf("%v malformed", v)
			}
			r := s.all()[0]
			fr, err := r.FlowRecord()
			if err != nil {
				t.Fatal(err)
			}
			if fr.L7 != tc.want {
				t.Errorf("flow.L7 = %+v\nwant %+v", fr.L7, tc.want)
			}
			var obj map[string]any
			if err := json.Unmarshal(r.AppendJSON(nil), &obj); err != nil {
				t.Fatalf("JSON: %v", err)
			}
			for i, name := range names {
				if obj[name] != values(&tc.want)[i] {
					t.Errorf("JSON %s = %#v, want %q", name, obj[name], values(&tc.want)[i])
				}
				if f, ok := r.Get(name); !ok || f.Enterprise != ipfixie.EnterprisePlaceholder || f.ID != uint16(i+1) {
					t.Errorf("Get(%s) = %+v, %v", name, f, ok)
				}
			}
			if len(obj) != len(fields) {
				t.Errorf("JSON has %d keys, want %d (one per field): %v", len(obj), len(fields), obj)
			}
		})
	}
}
