package sink

import (
	"net/netip"
	"testing"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

// The proxy SNAT and cluster identity columns show what the agent
// exported, and nothing for a connection that was not SNATed (not the
// v4-mapped zero address, not a stray port).
func TestProxySnatAndClusterUUIDColumns(t *testing.T) {
	snatted := func(addr string, port uint16) *correlate.Record {
		var r correlate.Record
		r.Tuple = flow.NewTuple(netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("10.244.1.5"), 51000, 8080, flow.ProtoTCP)
		r.ProxySnatIP, r.ProxySnatPort = netip.MustParseAddr(addr).As16(), port
		r.ClusterID = "5b9c1f0e-6a8e-4d2b-b7a5-0f3e2d1c4b5a"
		return &r
	}
	plain := &correlate.Record{}
	plain.Tuple = flow.NewTuple(netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("10.244.1.5"), 51000, 8080, flow.ProtoTCP)
	for _, tc := range []struct {
		name        string
		r           *correlate.Record
		ip, cluster string
		port        uint64
	}{
		{"IPv4 masquerade", snatted("172.18.0.3", 61017), "172.18.0.3", "5b9c1f0e-6a8e-4d2b-b7a5-0f3e2d1c4b5a", 61017},
		{"IPv6 masquerade", snatted("fd00:172:18::3", 1025), "fd00:172:18::3", "5b9c1f0e-6a8e-4d2b-b7a5-0f3e2d1c4b5a", 1025},
		{"not SNATed, no cluster id", plain, "", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &Meta{}
			get := func(name string) Column {
				c, ok := LookupColumn(name)
				if !ok {
					t.Fatalf("no column %s", name)
				}
				return c
			}
			ip, port, cluster := get("proxySnatIP"), get("proxySnatPort"), get("clusterUUID")
			if ip.Type != TypeString || port.Type != TypeUInt16 || cluster.Type != TypeString {
				t.Errorf("types %s, %s, %s; want String, UInt16, String", ip.Type, port.Type, cluster.Type)
			}
			if got := ip.Str(tc.r, m); got != tc.ip {
				t.Errorf("proxySnatIP = %q, want %q", got, tc.ip)
			}
			if got := port.Num(tc.r, m); got != tc.port {
				t.Errorf("proxySnatPort = %d, want %d", got, tc.port)
			}
			if got := cluster.Str(tc.r, m); got != tc.cluster {
				t.Errorf("clusterUUID = %q, want %q", got, tc.cluster)
			}
		})
	}
}
