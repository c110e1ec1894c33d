package correlate

import (
	"net/netip"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// antreaModeA is node-a's half as an agent in export.collectorKind: antrea
// sends it: web is no pod of node-a, so the destination is cleared, and no
// name tells the collector which node sent it.
func antreaModeA(in Input) Input {
	in.Record.Destination = flow.Endpoint{}
	in.ExporterNode = ""
	return in
}

// antreaModeB is node-b's half in Antrea mode: the translated source is
// node-a's address, not a pod of node-b, so it is cleared.
func antreaModeB(in Input) Input {
	in.Record.Source = flow.Endpoint{}
	return in
}

// overlaySnat: on an overlay kube-proxy's masquerade picks the tunnel or
// gateway address of node-a (flannel.1's 10.244.1.0), which the agents'
// metadata maps to node-a like its InternalIP.
var overlaySnat = netip.MustParseAddrPort("10.244.1.0:40001")

func overlayA(in Input) Input {
	in.Record.ProxySnatIP, in.Record.ProxySnatPort = overlaySnat.Addr().As16(), overlaySnat.Port()
	return in
}

func overlayB(in Input) Input {
	in.Record.Tuple.SrcIP, in.Record.Tuple.SrcPort = overlaySnat.Addr().As16(), overlaySnat.Port()
	return in
}

type npScenario struct {
	name  string
	steps []npStep
}

// npOrders returns the steps of a connection that node-a reports with
// a(...) and node-b with b(...): end-of-flow only, and active updates then
// end-of-flow, each with either node first. Both nodes count 6000/600 in
// total.
func npOrders(a, b func(Input) Input) []npScenario {
	startB := t0.Add(200 * time.Millisecond)
	eofA := a(npHalfA(npClient, t0, 2*time.Second, flow.EndOfFlow, 6000, 600, 6000, 600))
	eofB := b(npHalfB(startB, 2500*time.Millisecond, flow.EndOfFlow, 6000, 600, 6000, 600))
	actA := func(at time.Duration, r flow.EndReason, tot, totR, d, dR uint64) Input {
		return a(npHalfA(npClient, t0, at, r, tot, totR, d, dR))
	}
	actB := func(at time.Duration, r flow.EndReason, tot, totR, d, dR uint64) Input {
		return b(npHalfB(startB, at, r, tot, totR, d, dR))
	}
	return []npScenario{
		{"entry node first, end of flow", []npStep{{2 * time.Second, eofA}, {3 * time.Second, eofB}}},
		{"backend node first, end of flow", []npStep{{2 * time.Second, eofB}, {3 * time.Second, eofA}}},
		{"entry node first, active then end", []npStep{
			{0, actA(0, flow.EndActiveTimeout, 1000, 100, 1000, 100)},
			{1 * time.Second, actB(time.Second, flow.EndActiveTimeout, 1000, 100, 1000, 100)},
			{20 * time.Second, actA(20*time.Second, flow.EndOfFlow, 6000, 600, 5000, 500)},
			{21 * time.Second, actB(21*time.Second, flow.EndOfFlow, 6000, 600, 5000, 500)},
		}},
		{"backend node first, active then end", []npStep{
			{0, actB(0, flow.EndActiveTimeout, 1000, 100, 1000, 100)},
			{1 * time.Second, actA(time.Second, flow.EndActiveTimeout, 1000, 100, 1000, 100)},
			{20 * time.Second, actB(20*time.Second, flow.EndOfFlow, 6000, 600, 5000, 500)},
			{21 * time.Second, actA(21*time.Second, flow.EndOfFlow, 6000, 600, 5000, 500)},
		}},
	}
}

// checkJoined: every row is the correlated client connection; over the
// rows each node's deltas, and the main ones, add up to 6000/600 once; the
// last row is the end of flow and the table is empty.
func checkJoined(t *testing.T, c *Correlator, out collected, snat netip.AddrPort) {
	t.Helper()
	if len(out) == 0 {
		t.Fatal("no rows")
	}
	var src, dst, main [2]flow.Counters
	add := func(acc *[2]flow.Counters, f, r flow.Counters) {
		acc[0].Packets += f.Packets
		acc[0].Bytes += f.Bytes
		acc[1].Packets += r.Packets
		acc[1].Bytes += r.Bytes
	}
	for i, r := range out {
		if r.Correlation != StatusCorrelated {
			t.Errorf("row %d: %s, want correlated", i, r.Correlation)
		}
		if r.Tuple != npClientTuple(npClient) {
			t.Errorf("row %d: tuple %v, want the client's %v", i, r.Tuple, npClientTuple(npClient))
		}
		if got, ok := r.ProxySnat(); !ok || got != snat {
			t.Errorf("row %d: proxy SNAT %v (%v), want %v", i, got, ok, snat)
		}
		if r.Destination.PodName != "web" || r.Destination.NodeName != "node-b" {
			t.Errorf("row %d: destination %+v, want web on node-b", i, r.Destination)
		}
		if r.FromSource.Exporter != npExporterA || r.FromDestination.Exporter != npExporterB {
			t.Errorf("row %d: source side from %q, destination side from %q; want %q, %q",
				i, r.FromSource.Exporter, r.FromDestination.Exporter, npExporterA, npExporterB)
		}
		add(&src, r.FromSource.FwdDelta, r.FromSource.RevDelta)
		add(&dst, r.FromDestination.FwdDelta, r.FromDestination.RevDelta)
		add(&main, r.FwdDelta, r.RevDelta)
	}
	if want := fwdRev(6000, 600); src != want || dst != want || main != want {
		t.Errorf("deltas over %d rows: source node %+v, destination node %+v, main %+v; want %+v each", len(out), src, dst, main, want)
	}
	last := out[len(out)-1]
	checkSide(t, "last row, source node", last.FromSource, npExporterA, fwdRev(6000, 600), [2]flow.Counters{last.FromSource.FwdDelta, last.FromSource.RevDelta})
	checkSide(t, "last row, destination node", last.FromDestination, npExporterB, fwdRev(6000, 600), [2]flow.Counters{last.FromDestination.FwdDelta, last.FromDestination.RevDelta})
	if last.EndReason != flow.EndOfFlow || c.Len() != 0 || len(c.table) != 0 {
		t.Errorf("last row %s, table holds %d; want end-of-flow and empty", last.EndReason, c.Len())
	}
}

// Agents in Antrea mode clear every end that is not a pod of their node:
// node-a's half names no destination node, node-b's half no source. The
// entry node's half must still wait for the backend node's, and the
// backend node's half must still land on the destination side.
func TestNodePortAntreaModeHalvesJoin(t *testing.T) {
	for _, tc := range npOrders(antreaModeA, antreaModeB) {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second, ActiveTimeout: 10 * time.Second, InactiveTimeout: 60 * time.Second})
			out := npRun(t, c, tc.steps, 40*time.Second)
			if want := 1 + btoi(tc.steps[0].in.Record.EndReason != flow.EndOfFlow); len(out) != want {
				t.Errorf("%d rows, want %d", len(out), want)
			}
			checkJoined(t, c, out, npSnat)
		})
	}
}

// The backend node's half names nothing that tells its side (no names, the
// collector does not know its node) and arrives first; the entry node's
// half, identified by its NAT, takes the source side and moves it over.
func TestNodePortNamelessBackendHalfFirst(t *testing.T) {
	nameless := func(in Input) Input {
		in.Record.Source, in.Record.Destination, in.ExporterNode = flow.Endpoint{}, flow.Endpoint{}, ""
		return in
	}
	for _, tc := range npOrders(antreaModeA, nameless)[1:2] {
		c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second})
		// The entry node's half names the destination in flowlens mode;
		// only the backend half is nameless.
		tc.steps[1].in = npHalfA(npClient, t0, 2*time.Second, flow.EndOfFlow, 6000, 600, 6000, 600)
		out := npRun(t, c, tc.steps, 40*time.Second)
		if len(out) != 1 {
			t.Fatalf("%d rows, want 1", len(out))
		}
		checkJoined(t, c, out, npSnat)
	}
}

// On an overlay the masquerade address is node-a's tunnel or gateway
// address; the backend node's metadata maps it to node-a (k8smeta), so its
// half is inter-node and waits like with the InternalIP.
func TestNodePortOverlaySnatAddressJoins(t *testing.T) {
	for _, tc := range npOrders(overlayA, overlayB) {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second, ActiveTimeout: 10 * time.Second, InactiveTimeout: 60 * time.Second})
			out := npRun(t, c, tc.steps, 40*time.Second)
			if want := 1 + btoi(tc.steps[0].in.Record.EndReason != flow.EndOfFlow); len(out) != want {
				t.Errorf("%d rows, want %d", len(out), want)
			}
			checkJoined(t, c, out, overlaySnat)
		})
	}
}

// A pod's own egress masquerade (to-external) is SNATed too, but no other
// node reports it: it passes straight through, not flagged unmatched.
func TestEgressMasqueradeDoesNotWait(t *testing.T) {
	in := srcHalf(flow.EndOfFlow)
	in.Record.FlowType = flow.FlowTypeToExternal
	in.Record.Destination = flow.Endpoint{}
	in.Record.ProxySnatIP, in.Record.ProxySnatPort = netip.MustParseAddr("172.18.0.2").As16(), 40002
	c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second})
	var out collected
	c.Add(&in, t0.Add(2*time.Second), out.emit)
	if len(out) != 1 || out[0].Correlation != StatusNotRequired || out[0].FwdDelta.Bytes != 1000 || c.Len() != 0 {
		t.Fatalf("%d rows (table %d), want 1 not-required row with 1000 bytes at once", len(out), c.Len())
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
