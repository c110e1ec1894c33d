package ipfixcollect

import (
	"encoding/json"
	"net"
	"net/netip"
	"testing"
)

// Antrea's proxy SNAT and cluster IEs, built here by hand (not by
// ipfixexport), decode by name into flow.Record, and the unspecified
// address Antrea sends for "no SNAT" decodes as none.
func TestProxySnatAndClusterIdDecodeFromAntreaIEs(t *testing.T) {
	// Template 301: addresses, packetDeltaCount, proxySnatIPv4 (170),
	// proxySnatPort (172), clusterId (158, variable length).
	fields := []spec{srcV4, dstV4, pktDelta4, {56506, 170, 4}, {56506, 172, 2}, {56506, 158, 65535}}
	for _, tc := range []struct {
		name    string
		snat    [4]byte
		port    uint16
		cluster string
		want    netip.AddrPort
		wantOK  bool
	}{
		{"masqueraded", [4]byte{172, 18, 0, 3}, 61017, "5b9c1f0e-6a8e-4d2b-b7a5-0f3e2d1c4b5a", netip.MustParseAddrPort("172.18.0.3:61017"), true},
		{"not SNATed", [4]byte{}, 0, "", netip.AddrPort{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, s, _ := run(t, TCP)
			conn, err := net.Dial("tcp", c.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			data := append(simpleData(1), tc.snat[:]...)
			data = append(data, byte(tc.port>>8), byte(tc.port), byte(len(tc.cluster)))
			data = append(data, tc.cluster...)
			if _, err := conn.Write(newMsg(1).set(2, tmplRecord(301, fields...)).set(301, data).bytes()); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "one record", func() bool { return len(s.all()) == 1 })
			r := s.all()[0]
			fr, err := r.FlowRecord()
			if err != nil {
				t.Fatal(err)
			}
			if got, ok := fr.ProxySnat(); got != tc.want || ok != tc.wantOK {
				t.Errorf("ProxySnat() = %v, %v; want %v, %v", got, ok, tc.want, tc.wantOK)
			}
			if fr.ClusterID != tc.cluster {
				t.Errorf("ClusterID %q, want %q", fr.ClusterID, tc.cluster)
			}
			var obj map[string]any
			if err := json.Unmarshal(r.AppendJSON(nil), &obj); err != nil {
				t.Fatalf("JSON: %v", err)
			}
			if obj["proxySnatIPv4"] != netip.AddrFrom4(tc.snat).String() || obj["proxySnatPort"] != float64(tc.port) || obj["clusterId"] != tc.cluster {
				t.Errorf("JSON names/values: %v", obj)
			}
		})
	}
}
