package agent

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/flow"
)

var (
	clientPod = flow.Endpoint{PodName: "client", PodNamespace: "shop", NodeName: "node-a", Labels: `{"app":"client"}`}
	serverPod = flow.Endpoint{PodName: "server", PodNamespace: "shop", NodeName: "node-b", Labels: `{"app":"server"}`}
	localPeer = flow.Endpoint{PodName: "cache", PodNamespace: "shop", NodeName: "node-a"}
	nodeBHost = flow.Endpoint{NodeName: "node-b"}
	nodeAHost = flow.Endpoint{NodeName: "node-a"}
)

// halfRecord is an enriched record with every field the mode must leave
// alone set to something recognisable.
func halfRecord(src, dst flow.Endpoint, ft flow.FlowType) flow.Record {
	c := tcpConn(40000, 7, 1500, 12, 64000, 50)
	return flow.Record{
		Conn: c, FwdDelta: c.Fwd, RevDelta: c.Rev, EndReason: flow.EndOfFlow, ExportNanos: t0.UnixNano(),
		FlowType: ft, Source: src, Destination: dst,
		ServicePortName: "shop/server:http", ClusterIP: true,
		L7: flow.L7{AppProtocolName: "http", HTTPVals: `{"0":"GET /"}`},
	}
}

func TestAntreaHalvesKeepOnlyThisNodesPods(t *testing.T) {
	h := newAntreaHalves("node-a")
	tests := []struct {
		name             string
		src, dst         flow.Endpoint
		ft               flow.FlowType
		wantSrc, wantDst flow.Endpoint
	}{
		// The source node's half: Antrea's FA takes it as the source's
		// only with sourcePodName set and destinationPodName empty.
		{"inter-node, local source", clientPod, serverPod, flow.FlowTypeInterNode, clientPod, flow.Endpoint{}},
		{"inter-node, local destination", serverPod, clientPod, flow.FlowTypeInterNode, flow.Endpoint{}, clientPod},
		{"intra-node keeps both", clientPod, localPeer, flow.FlowTypeIntraNode, clientPod, localPeer},
		// Antrea names a node only beside a pod it resolved.
		{"pod to a remote node", clientPod, nodeBHost, flow.FlowTypeInterNode, clientPod, flow.Endpoint{}},
		{"this node to a remote pod", nodeAHost, serverPod, flow.FlowTypeInterNode, flow.Endpoint{}, flow.Endpoint{}},
		{"to external", clientPod, flow.Endpoint{}, flow.FlowTypeToExternal, clientPod, flow.Endpoint{}},
		{"pod of unknown node", flow.Endpoint{PodName: "x", PodNamespace: "shop"}, clientPod, flow.FlowTypeInterNode, flow.Endpoint{}, clientPod},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := halfRecord(tc.src, tc.dst, tc.ft)
			h.Enrich(&r)
			want := halfRecord(tc.wantSrc, tc.wantDst, tc.ft)
			if d := cmp.Diff(want, r); d != "" {
				t.Errorf("record after antreaHalves (-want +got):\n%s", d)
			}
		})
	}
}

// testInventory: node-a runs client and cache, node-b runs server.
const testInventory = `
groups: [{name: shop}]
nodes:
  - {name: node-a, ips: [192.168.0.1]}
  - {name: node-b, ips: [192.168.0.2]}
entries:
  - {name: client, group: shop, ips: [10.244.1.2], node: node-a, labels: {app: client}}
  - {name: cache, group: shop, ips: [10.244.1.3], node: node-a}
  - {name: server, group: shop, ips: [10.244.2.2], node: node-b, labels: {app: server}}
`

var (
	clientIP4 = netip.MustParseAddr("10.244.1.2")
	cacheIP4  = netip.MustParseAddr("10.244.1.3")
	serverIP4 = netip.MustParseAddr("10.244.2.2")
)

// enrichOn builds the agent of node with export.collectorKind kind ("" =
// left out) over the real inventory source and runs its enrichers, in the
// loop's order, on a record of the connection src -> dst carrying c's
// counters.
func enrichOn(t *testing.T, node, kind string, src, dst netip.Addr, fwd, rev flow.Counters) flow.Record {
	t.Helper()
	dir := t.TempDir()
	invPath := filepath.Join(dir, "inventory.yaml")
	if err := os.WriteFile(invPath, []byte(testInventory), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "agent.yaml")
	body := "nodeName: " + node + "\ninventory:\n  file: " + invPath + "\n"
	if kind != "" {
		body += "export:\n  collectorKind: " + kind + "\n"
	}
	if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := agentconfig.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	c := flow.Conn{Tuple: flow.NewTuple(src, dst, 40000, 8080, flow.ProtoTCP), StartNanos: t0.UnixNano(), Fwd: fwd, Rev: rev}
	c.OrigDstIP, c.OrigDstPort = c.Tuple.DstIP, c.Tuple.DstPort
	r := flow.Record{Conn: c, FwdDelta: fwd, RevDelta: rev, EndReason: flow.EndOfFlow, ExportNanos: t0.UnixNano()}
	for _, e := range a.loop.cfg.Enrichers {
		e.Enrich(&r)
	}
	return r
}

// The mode is wired from export.collectorKind behind the real inventory
// source: the same connection enriched on node-a is exported with both
// pods (flowlens) or only node-a's pod (antrea).
func TestCollectorKindSelectsTheHalves(t *testing.T) {
	type ends struct{ Src, Dst flow.Endpoint }
	tests := []struct {
		name     string
		kind     string
		src, dst netip.Addr
		want     ends
		wantType flow.FlowType
	}{
		{"default is flowlens: both pods", "", clientIP4, serverIP4, ends{clientPod, serverPod}, flow.FlowTypeInterNode},
		{"flowlens: both pods", agentconfig.CollectorFlowlens, serverIP4, clientIP4, ends{serverPod, clientPod}, flow.FlowTypeInterNode},
		{"antrea: source node's half", agentconfig.CollectorAntrea, clientIP4, serverIP4, ends{clientPod, flow.Endpoint{}}, flow.FlowTypeInterNode},
		{"antrea: destination node's half", agentconfig.CollectorAntrea, serverIP4, clientIP4, ends{flow.Endpoint{}, clientPod}, flow.FlowTypeInterNode},
		{"antrea: intra-node keeps both", agentconfig.CollectorAntrea, clientIP4, cacheIP4,
			ends{clientPod, flow.Endpoint{PodName: "cache", PodNamespace: "shop", NodeName: "node-a"}}, flow.FlowTypeIntraNode},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := enrichOn(t, "node-a", tc.kind, tc.src, tc.dst, flow.Counters{}, flow.Counters{})
			if d := cmp.Diff(tc.want, ends{r.Source, r.Destination}); d != "" {
				t.Errorf("ends (-want +got):\n%s", d)
			}
			// The flow type is what the context source said, in both modes.
			if r.FlowType != tc.wantType {
				t.Errorf("flowType %s, want %s", r.FlowType, tc.wantType)
			}
		})
	}
}

// Antrea's Flow Aggregator rule for the halves of an inter-node connection,
// as written in pkg/flowaggregator/intermediate/aggregate.go at Antrea
// v2.5.3: isRecordFromSrc (sourcePodName set, destinationPodName empty),
// isRecordFromDst (the reverse), areRecordsFromSameNode (both from the
// source or both from the destination: no correlation), and
// aggregationProcess.addOrUpdateRecordInMap, which aggregates a record into
// the ...FromSourceNode stats when isRecordFromSrc and into the
// ...FromDestinationNode stats otherwise. test/antreafa runs the real
// aggregator; this keeps the rule in every `make test`.
func antreaIsFromSrc(r *flow.Record) bool {
	return r.Source.PodName != "" && r.Destination.PodName == ""
}

func antreaIsFromDst(r *flow.Record) bool {
	return r.Destination.PodName != "" && r.Source.PodName == ""
}

func antreaSameNode(a, b *flow.Record) bool {
	return (antreaIsFromSrc(a) && antreaIsFromSrc(b)) || (antreaIsFromDst(a) && antreaIsFromDst(b))
}

// TestAntreaFlowAggregatorRule: the two agents' halves of one inter-node
// connection, client (node-a) -> server (node-b), through Antrea's rule.
// In antrea mode node-a's half is the source side and node-b's the
// destination side; in flowlens mode both are filed as the destination
// side and the source side stays empty (every ...FromSourceNode counter
// 0), the bug of issue 10 item 1.
func TestAntreaFlowAggregatorRule(t *testing.T) {
	fwdA, revA := flow.Counters{Packets: 25, Bytes: 31337}, flow.Counters{Packets: 12, Bytes: 7637}
	fwdB, revB := flow.Counters{Packets: 24, Bytes: 31285}, flow.Counters{Packets: 11, Bytes: 7585}
	type sides struct {
		Correlated bool
		// The nodes whose halves each side aggregates, in arrival order
		// (node-a's first).
		Source, Destination []string
	}
	for _, tc := range []struct {
		kind string
		want sides
	}{
		{agentconfig.CollectorAntrea, sides{true, []string{"node-a"}, []string{"node-b"}}},
		{agentconfig.CollectorFlowlens, sides{true, nil, []string{"node-a", "node-b"}}},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			halfA := enrichOn(t, "node-a", tc.kind, clientIP4, serverIP4, fwdA, revA)
			halfB := enrichOn(t, "node-b", tc.kind, clientIP4, serverIP4, fwdB, revB)
			got := sides{Correlated: !antreaSameNode(&halfB, &halfA)}
			for _, h := range []struct {
				node string
				r    *flow.Record
			}{{"node-a", &halfA}, {"node-b", &halfB}} {
				if h.r.FlowType != flow.FlowTypeInterNode {
					t.Fatalf("%s: flowType %s, want inter-node (Antrea correlates only those)", h.node, h.r.FlowType)
				}
				if antreaIsFromSrc(h.r) {
					got.Source = append(got.Source, h.node)
				} else {
					got.Destination = append(got.Destination, h.node)
				}
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("Antrea FA sides (-want +got):\n%s", d)
			}
			// Counters are left alone: the source side gets exactly what
			// node-a counted.
			if halfA.FwdDelta != fwdA || halfA.RevDelta != revA || halfB.FwdDelta != fwdB || halfB.RevDelta != revB {
				t.Errorf("deltas changed: node-a %+v/%+v, node-b %+v/%+v", halfA.FwdDelta, halfA.RevDelta, halfB.FwdDelta, halfB.RevDelta)
			}
			// Correlation copies each half's non-empty pod fields into the
			// aggregated record (aggregationProcess.correlateRecords): in
			// antrea mode each half brings the pod of its node.
			if tc.kind == agentconfig.CollectorAntrea {
				if halfA.Source != clientPod || halfB.Destination != serverPod {
					t.Errorf("source half names %+v, destination half names %+v; want client and server", halfA.Source, halfB.Destination)
				}
			}
		})
	}
}
