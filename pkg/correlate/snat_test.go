package correlate

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Only the half of the node that applied source NAT carries the
// translation; the merged row keeps it whichever half came first, and
// takes the cluster id from whichever half has one.
func TestMergedRowKeepsProxySnatAndClusterID(t *testing.T) {
	snat := netip.MustParseAddrPort("172.18.0.3:61017")
	withSnat := func(in Input) Input {
		in.Record.ProxySnatIP, in.Record.ProxySnatPort = snat.Addr().As16(), snat.Port()
		return in
	}
	// The node the connection was handed to sees the translated source.
	withCluster := func(in Input) Input {
		in.Record.ClusterID = "prod-eu-1"
		in.Record.Tuple.SrcIP, in.Record.Tuple.SrcPort = snat.Addr().As16(), snat.Port()
		return in
	}
	for _, tc := range []struct {
		name  string
		order []Input
	}{
		{"SNAT half first", []Input{withSnat(srcHalf(flow.EndOfFlow)), withCluster(dstHalf(flow.EndOfFlow))}},
		{"SNAT half second", []Input{withCluster(dstHalf(flow.EndOfFlow)), withSnat(srcHalf(flow.EndOfFlow))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second})
			var out collected
			for i, in := range tc.order {
				now := t0.Add(time.Duration(i) * time.Second)
				c.Add(&in, now, out.emit)
				c.Expire(now, out.emit)
			}
			if len(out) != 1 {
				t.Fatalf("got %d rows, want 1", len(out))
			}
			r := out[0]
			if got, ok := r.ProxySnat(); !ok || got != snat {
				t.Errorf("ProxySnat = %v, %v; want %v", got, ok, snat)
			}
			if r.ClusterID != "prod-eu-1" {
				t.Errorf("ClusterID = %q, want prod-eu-1", r.ClusterID)
			}
			if r.Correlation != StatusCorrelated || r.Fwd.Bytes != 1000 {
				t.Errorf("row %s with %d bytes, want correlated with the source node's 1000", r.Correlation, r.Fwd.Bytes)
			}
		})
	}
}

// A one-node connection passes straight through with its fields as sent.
func TestPassThroughKeepsProxySnatAndClusterID(t *testing.T) {
	in := srcHalf(flow.EndOfFlow)
	in.Record.FlowType = flow.FlowTypeFromExternal
	// The backend is on the exporting node: nothing else reports it. (An
	// empty destination would wait: in Antrea mode it is a remote pod.)
	in.Record.Source = flow.Endpoint{}
	in.Record.Destination = flow.Endpoint{PodName: "web", PodNamespace: "ns-b", NodeName: "node-a"}
	in.ExporterNode = "node-a"
	in.Record.ProxySnatIP, in.Record.ProxySnatPort = netip.MustParseAddr("fd00:172:18::3").As16(), 1025
	in.Record.ClusterID = "5b9c1f0e-6a8e-4d2b-b7a5-0f3e2d1c4b5a"
	c := newTestCorrelator(t, Config{})
	var out collected
	c.Add(&in, t0, out.emit)
	if len(out) != 1 {
		t.Fatalf("got %d rows, want 1", len(out))
	}
	if got, ok := out[0].ProxySnat(); !ok || got != netip.MustParseAddrPort("[fd00:172:18::3]:1025") || out[0].ClusterID != in.Record.ClusterID {
		t.Errorf("row ProxySnat %v %v, ClusterID %q", got, ok, out[0].ClusterID)
	}
}
