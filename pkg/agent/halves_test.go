package agent

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/conntrack"
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

// recordingSink keeps what reaches it.
type recordingSink struct{ got []flow.Record }

func (s *recordingSink) Export(r *flow.Record) bool { s.got = append(s.got, *r); return true }

func TestAntreaHalvesKeepOnlyThisNodesPods(t *testing.T) {
	next := &recordingSink{}
	h, err := newAntreaHalves("node-a", next, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name             string
		src, dst         flow.Endpoint
		ft               flow.FlowType
		wantSrc, wantDst flow.Endpoint
		wantFt           flow.FlowType // 0: ft
	}{
		// The source node's half: Antrea's FA takes it as the source's
		// only with sourcePodName set and destinationPodName empty.
		{"inter-node, local source", clientPod, serverPod, flow.FlowTypeInterNode, clientPod, flow.Endpoint{}, 0},
		{"inter-node, local destination", serverPod, clientPod, flow.FlowTypeInterNode, flow.Endpoint{}, clientPod, 0},
		{"intra-node keeps both", clientPod, localPeer, flow.FlowTypeIntraNode, clientPod, localPeer, 0},
		// Antrea names a node only beside a pod it resolved, and a
		// destination that is not a pod is to-external for it: inter-node
		// would make FA wait for node-b's half, which node-b does not
		// send, and then delete node-a's.
		{"pod to a remote node", clientPod, nodeBHost, flow.FlowTypeInterNode, clientPod, flow.Endpoint{}, flow.FlowTypeToExternal},
		{"pod to this node", clientPod, nodeAHost, flow.FlowTypeIntraNode, clientPod, flow.Endpoint{}, flow.FlowTypeToExternal},
		{"to external", clientPod, flow.Endpoint{}, flow.FlowTypeToExternal, clientPod, flow.Endpoint{}, 0},
		{"pod of unknown node", flow.Endpoint{PodName: "x", PodNamespace: "shop"}, clientPod, flow.FlowTypeInterNode, flow.Endpoint{}, clientPod, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			next.got = nil
			r := halfRecord(tc.src, tc.dst, tc.ft)
			if !h.Export(&r) {
				t.Fatal("record skipped, want it sent")
			}
			wantFt := tc.ft
			if tc.wantFt != 0 {
				wantFt = tc.wantFt
			}
			want := halfRecord(tc.wantSrc, tc.wantDst, wantFt)
			if len(next.got) != 1 {
				t.Fatalf("%d records reached the sink, want 1", len(next.got))
			}
			if d := cmp.Diff(want, next.got[0]); d != "" {
				t.Errorf("record after antreaHalves (-want +got):\n%s", d)
			}
		})
	}
}

// TestAntreaHalvesSkipWhatAntreaDoesNotExport: Antrea's agents export no
// connection whose source is not a pod, and a connection to a non-pod
// address only from the source pod's node (findFlowType/exportConn in
// pkg/agent/flowexporter/exporter.go, v2.5.3). Cleared of names such a
// record would reach FA nameless and be filed on the destination side.
func TestAntreaHalvesSkipWhatAntreaDoesNotExport(t *testing.T) {
	remoteHost := flow.Endpoint{NodeName: "node-c"}
	tests := []struct {
		name     string
		src, dst flow.Endpoint
		ft       flow.FlowType
	}{
		{"this node's host to a remote pod", nodeAHost, serverPod, flow.FlowTypeInterNode},
		{"remote host to this node's pod", nodeBHost, clientPod, flow.FlowTypeInterNode},
		{"external to this node's pod", flow.Endpoint{}, clientPod, flow.FlowTypeFromExternal},
		{"remote pod to this node's host", serverPod, nodeAHost, flow.FlowTypeInterNode},
		{"remote pod to another node", serverPod, remoteHost, flow.FlowTypeInterNode},
		{"remote pod to external", serverPod, flow.Endpoint{}, flow.FlowTypeToExternal},
		{"host to host", nodeAHost, nodeBHost, flow.FlowTypeInterNode},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			next := &recordingSink{}
			reg := prometheus.NewRegistry()
			h, err := newAntreaHalves("node-a", next, reg)
			if err != nil {
				t.Fatal(err)
			}
			r := halfRecord(tc.src, tc.dst, tc.ft)
			if !h.Export(&r) {
				t.Error("Export refused a skipped record, want it taken (skipped and counted)")
			}
			if len(next.got) != 0 {
				t.Errorf("sink got %+v, want nothing", next.got)
			}
			if got := gatheredValue(t, reg, "flowlens_agent_antrea_mode_skipped_records_total"); got != 1 {
				t.Errorf("skipped counter %v, want 1", got)
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
// loop's order, and the antrea mode's stage in front of the Sink, on a
// record of the connection src -> dst carrying c's counters. A record the
// agent would not send comes back as the zero record.
func enrichOn(t *testing.T, node, kind string, src, dst netip.Addr, fwd, rev flow.Counters) flow.Record {
	t.Helper()
	r, _ := exportOn(t, node, kind, src, dst, fwd, rev)
	return r
}

// exportOn is enrichOn that also says whether the agent sends the record
// at all (false: the zero record).
func exportOn(t *testing.T, node, kind string, src, dst netip.Addr, fwd, rev flow.Counters) (flow.Record, bool) {
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
	// What stands between the enrichers and the agent's output (the
	// antrea mode) runs too, in front of a recorder instead of the wire.
	if h, ok := a.loop.cfg.Sink.(*antreaHalves); ok {
		rec := &recordingSink{}
		h.next = rec
		h.Export(&r)
		if len(rec.got) == 0 {
			return flow.Record{}, false
		}
		return rec.got[0], true
	}
	return r, true
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

// gatheredValue is the value of the registered counter name.
func gatheredValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("%s not registered", name)
	return 0
}

// A connection from node-a's host network (kubelet, a hostNetwork pod) to
// the pod server on node-b: neither agent sends a record of it in antrea
// mode, as neither Antrea agent would (its source is not a pod); both do
// in flowlens mode.
func TestAntreaModeSkipsHostToRemotePod(t *testing.T) {
	nodeAIP := netip.MustParseAddr("192.168.0.1")
	for _, tc := range []struct {
		kind string
		want bool
	}{
		{agentconfig.CollectorAntrea, false},
		{agentconfig.CollectorFlowlens, true},
	} {
		for _, node := range []string{"node-a", "node-b"} {
			_, sent := exportOn(t, node, tc.kind, nodeAIP, serverIP4, flow.Counters{Packets: 1, Bytes: 60}, flow.Counters{})
			if sent != tc.want {
				t.Errorf("%s mode, %s's agent: sent %v, want %v", tc.kind, node, sent, tc.want)
			}
		}
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

// namesByPort is an enricher standing in for the context source: the
// client at port 40001 is a pod of node-a, any other client port is node-a's
// host network; the server is always a pod of node-b.
type namesByPort struct{}

func (namesByPort) Enrich(r *flow.Record) {
	r.Source = nodeAHost
	if r.Tuple.SrcPort == 40001 {
		r.Source = clientPod
	}
	r.Destination = serverPod
	r.FlowType = flow.FlowTypeInterNode
}

// TestAntreaModeSkipsAfterTheQueue: a skipped connection is still done with
// as far as the store and the queue are concerned. Its active-timeout and
// end-of-flow records are skipped (and counted), it is not retried, and
// shutdown has nothing of it left to export as forced; the connection that
// is sent gets exactly the records it gets in flowlens mode.
func TestAntreaModeSkipsAfterTheQueue(t *testing.T) {
	src := newFakeSource()
	sent := tcpConn(40001, 1, 1000, 10, 2000, 20)
	skipped := tcpConn(40002, 2, 300, 3, 400, 4)
	src.set(sent, skipped)
	var halves *antreaHalves
	h := newHarness(t, src, func(cfg *LoopConfig) {
		cfg.Enrichers = []Enricher{namesByPort{}}
		var err error
		if halves, err = newAntreaHalves("node-a", cfg.Sink, nil); err != nil {
			t.Fatal(err)
		}
		cfg.Sink = halves
	})

	// Both reach the active timeout; then both end.
	h.poll(at(activeAfter))
	h.tick(at(activeAfter + tickEvery))
	src.remove(sent.Tuple)
	src.remove(skipped.Tuple)
	endSent, endSkipped := sent, skipped
	endSent.Fwd.Bytes, endSkipped.Fwd.Bytes = 1500, 350
	h.send(at(activeAfter+time.Second), conntrack.EventDestroy, &endSent)
	h.send(at(activeAfter+time.Second), conntrack.EventDestroy, &endSkipped)
	h.tick(at(activeAfter + time.Second + tickEvery))
	h.poll(at(activeAfter + 2*time.Second))
	h.tick(at(activeAfter + 2*time.Second + tickEvery))
	h.stop(at(activeAfter + 3*time.Second))

	checkRecords(t, h.sink.all(),
		want{40001, active, 1000, 10, 2000, 20},
		want{40001, eof, 500, 0, 0, 0})
	checkSums(t, h.sink.all())
	if got := counterValue(t, halves.skipped); got != 2 {
		t.Errorf("skipped counter %v, want 2 (the active-timeout and end-of-flow records of port 40002)", got)
	}
}

// A pod on node-a talking to node-b's own address: node-a sends it as
// Antrea's to-external record of its pod (FA does not wait for a second
// half of it), node-b sends nothing; in flowlens mode both send it as
// inter-node.
func TestAntreaModePodToRemoteNodeIsToExternal(t *testing.T) {
	nodeBIP := netip.MustParseAddr("192.168.0.2")
	fwd := flow.Counters{Packets: 3, Bytes: 180}
	halfA, sentA := exportOn(t, "node-a", agentconfig.CollectorAntrea, clientIP4, nodeBIP, fwd, flow.Counters{})
	if !sentA || halfA.FlowType != flow.FlowTypeToExternal || halfA.Source != clientPod || halfA.Destination != (flow.Endpoint{}) {
		t.Errorf("node-a, antrea: sent %v, flowType %s, ends %+v -> %+v; want to-external from %+v to nothing named", sentA, halfA.FlowType, halfA.Source, halfA.Destination, clientPod)
	}
	if _, sentB := exportOn(t, "node-b", agentconfig.CollectorAntrea, clientIP4, nodeBIP, fwd, flow.Counters{}); sentB {
		t.Error("node-b, antrea: sent a record of another node's pod to its own address; Antrea's agent would not")
	}
	for _, node := range []string{"node-a", "node-b"} {
		r, sent := exportOn(t, node, agentconfig.CollectorFlowlens, clientIP4, nodeBIP, fwd, flow.Counters{})
		if !sent || r.FlowType != flow.FlowTypeInterNode {
			t.Errorf("%s, flowlens: sent %v, flowType %s; want inter-node", node, sent, r.FlowType)
		}
	}
}

// refusingOnce refuses its first record, then takes every one.
type refusingOnce struct {
	recordingSink
	refused bool
}

func (s *refusingOnce) Export(r *flow.Record) bool {
	if !s.refused {
		s.refused = true
		return false
	}
	return s.recordingSink.Export(r)
}

// A record the sink refuses is offered again whole: shaping the caller's
// record in place made the retry skip it (its source no longer a pod).
func TestAntreaHalvesRefusedRecordIsSentWhenOfferedAgain(t *testing.T) {
	next := &refusingOnce{}
	h, err := newAntreaHalves("node-a", next, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := halfRecord(serverPod, clientPod, flow.FlowTypeInterNode)
	if h.Export(&r) {
		t.Fatal("first offer taken, want refused")
	}
	if !h.Export(&r) {
		t.Fatal("second offer refused")
	}
	if len(next.got) != 1 || next.got[0].Destination != clientPod || next.got[0].Source != (flow.Endpoint{}) {
		t.Fatalf("sent %+v, want one record with only this node's destination pod", next.got)
	}
	if v := counterValue(t, h.skipped); v != 0 {
		t.Errorf("%v records skipped, want 0", v)
	}
}
