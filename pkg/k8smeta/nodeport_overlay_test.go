package k8smeta

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/flowlens/flowlens/pkg/correlate"
	"github.com/flowlens/flowlens/pkg/flow"
)

// From the agent's enrichment to the aggregator's row, on a flannel-like
// overlay: a client outside dials a NodePort of node-b, which DNATs to web
// on node-a (this agent's node) and masquerades to flannel.1's address,
// node-b's pod CIDR network address. This agent's half must name node-b as
// the source, so that it waits for node-b's half and the connection is one
// correlated row with every byte once, in either arrival order. Without
// the pod CIDR on the Node object the same traffic is two rows.
func TestOverlayNodePortIsOneRowFromEnrichmentToCorrelation(t *testing.T) {
	const sent, reply = 200_000, 30_000
	client := netip.MustParseAddrPort("192.0.2.9:51234")
	snat := netip.MustParseAddrPort("10.244.1.0:40001")
	web := netip.MustParseAddrPort("10.244.0.3:8080")
	start := sec(1)

	// node-b's half, as its agent sends it: the client's tuple with the
	// proxy SNAT, web named (flowlens mode knows remote pods).
	entryHalf := func() correlate.Input {
		r := flow.Record{FlowType: flow.FlowTypeFromExternal, EndReason: flow.EndOfFlow}
		r.Tuple = flow.NewTuple(client.Addr(), web.Addr(), client.Port(), web.Port(), flow.ProtoTCP)
		r.OrigDstIP, r.OrigDstPort = netip.MustParseAddr("172.18.0.3").As16(), 30080
		r.ProxySnatIP, r.ProxySnatPort = snat.Addr().As16(), snat.Port()
		r.StartNanos, r.ExportNanos, r.StopNanos = start.UnixNano(), sec(3).UnixNano(), sec(3).UnixNano()
		r.Fwd, r.Rev = flow.Counters{Packets: 200, Bytes: sent}, flow.Counters{Packets: 30, Bytes: reply}
		r.FwdDelta, r.RevDelta = r.Fwd, r.Rev
		r.Destination = flow.Endpoint{PodName: "web", PodNamespace: "shop", NodeName: "node-a"}
		return correlate.Input{Record: r, Exporter: "node-b", ExporterNode: "node-b"}
	}
	for _, tc := range []struct {
		name     string
		podCIDRs []string
	}{
		{"node object names the pod CIDR", []string{"10.244.1.0/24"}},
		// The backend's half is then from-external: first, it passes
		// through at once and the entry node's half is a second row.
		{"no pod CIDR: the masquerade address looks external", nil},
	} {
		e := start2(t, tc.podCIDRs)
		// This agent's half: conntrack's view, enriched here.
		backend := flow.Record{EndReason: flow.EndOfFlow}
		backend.Conn = conn(snat.Addr().String(), web.Addr().String(), snat.Port(), web.Port(), start.Add(300*time.Millisecond))
		backend.ExportNanos, backend.StopNanos = sec(4).UnixNano(), sec(4).UnixNano()
		backend.Fwd, backend.Rev = flow.Counters{Packets: 200, Bytes: sent}, flow.Counters{Packets: 30, Bytes: reply}
		backend.FwdDelta, backend.RevDelta = backend.Fwd, backend.Rev
		e.meta.Enrich(&backend)
		backendHalf := correlate.Input{Record: backend, Exporter: "node-a", ExporterNode: "node-a"}

		for _, order := range []struct {
			name     string
			halve    []correlate.Input
			wantRows int
		}{
			{"entry node first", []correlate.Input{entryHalf(), backendHalf}, 1},
			{"backend node first", []correlate.Input{backendHalf, entryHalf()}, 1 + btoi(tc.podCIDRs == nil)},
		} {
			t.Run(tc.name+"/"+order.name, func(t *testing.T) {
				c, err := correlate.New(correlate.Config{CorrelationWait: 5 * time.Second}, nil)
				if err != nil {
					t.Fatal(err)
				}
				var rows []*correlate.Record
				emit := func(r *correlate.Record) { rows = append(rows, r) }
				for i := range order.halve {
					now := sec(4 + i)
					c.Add(&order.halve[i], now, emit)
					c.Expire(now, emit)
				}
				c.Expire(sec(30), emit)
				var fwd, rev uint64
				for _, r := range rows {
					fwd, rev = fwd+r.FwdDelta.Bytes, rev+r.RevDelta.Bytes
				}
				if len(rows) != order.wantRows {
					t.Fatalf("%d rows (source %+v, %v), want %d", len(rows), backend.Source, backend.FlowType, order.wantRows)
				}
				if order.wantRows != 1 {
					return // the failure the pod CIDR prevents: each row counts the bytes
				}
				r := rows[0]
				if r.Correlation != correlate.StatusCorrelated || fwd != sent || rev != reply {
					t.Errorf("row %s with %d/%d bytes, want correlated with %d/%d", r.Correlation, fwd, rev, sent, reply)
				}
				if r.FromSource.Exporter != "node-b" || r.FromDestination.Exporter != "node-a" ||
					r.FromDestination.FwdDelta.Bytes != sent || r.FromSource.FwdDelta.Bytes != sent {
					t.Errorf("sides %+v / %+v, want node-b's then node-a's, %d bytes each", r.FromSource, r.FromDestination, sent)
				}
			})
		}
	}
}

// start2 starts the metadata of node-a with web, and node-b whose pod
// CIDRs are podCIDRs.
func start2(t *testing.T, podCIDRs []string) *env {
	t.Helper()
	nb := node("node-b", "172.18.0.3")
	nb.Spec = corev1.NodeSpec{PodCIDRs: podCIDRs}
	return start(t, false, node("node-a", "172.18.0.2"), pod("shop", "web", "10.244.0.3"), nb)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
