package correlate

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// A connection from outside the cluster to a NodePort of node-a, DNATed to
// the pod web on node-b and source-NATed to node-a's address:
//
//	node-a sees  client:51234 -> web:8080, proxy SNAT 172.18.0.2:40001
//	node-b sees  172.18.0.2:40001 -> web:8080
//
// Both count the same packets, in the same orientation (client -> web is
// forward for both).
var (
	npClient   = netip.MustParseAddrPort("192.0.2.9:51234")
	npNodePort = netip.MustParseAddrPort("172.18.0.2:30080")
	npSnat     = netip.MustParseAddrPort("172.18.0.2:40001")
	npPod      = netip.MustParseAddrPort("10.244.2.2:8080")
)

const (
	npExporterA = "10.0.0.1/1"
	npExporterB = "10.0.0.2/2"
)

func npClientTuple(client netip.AddrPort) flow.Tuple {
	return flow.NewTuple(client.Addr(), npPod.Addr(), client.Port(), npPod.Port(), flow.ProtoTCP)
}

// npHalfA is node-a's record: the client's tuple with the source NAT. The
// aggregator cannot name its node (neither end is a pod of node-a).
func npHalfA(client netip.AddrPort, start time.Time, at time.Duration, reason flow.EndReason, fwd, rev, fwdDelta, revDelta uint64) Input {
	r := flow.Record{FlowType: flow.FlowTypeFromExternal, EndReason: reason}
	r.Tuple = npClientTuple(client)
	r.OrigDstIP, r.OrigDstPort = npNodePort.Addr().As16(), npNodePort.Port()
	r.ProxySnatIP, r.ProxySnatPort = npSnat.Addr().As16(), npSnat.Port()
	r.StartNanos = start.UnixNano()
	r.ExportNanos = t0.Add(at).UnixNano()
	if reason == flow.EndOfFlow {
		r.StopNanos = r.ExportNanos
	}
	r.Fwd, r.Rev = flow.Counters{Packets: fwd / 100, Bytes: fwd}, flow.Counters{Packets: rev / 100, Bytes: rev}
	r.FwdDelta, r.RevDelta = flow.Counters{Packets: fwdDelta / 100, Bytes: fwdDelta}, flow.Counters{Packets: revDelta / 100, Bytes: revDelta}
	r.Destination = flow.Endpoint{PodName: "web", PodNamespace: "shop", NodeName: "node-b"}
	r.ServicePortName = "shop/web:http"
	return Input{Record: r, Exporter: npExporterA}
}

// npHalfB is node-b's record: the translated source, which its inventory
// names as node-a's address; no NAT of its own.
func npHalfB(start time.Time, at time.Duration, reason flow.EndReason, fwd, rev, fwdDelta, revDelta uint64) Input {
	r := flow.Record{FlowType: flow.FlowTypeInterNode, EndReason: reason}
	r.Tuple = flow.NewTuple(npSnat.Addr(), npPod.Addr(), npSnat.Port(), npPod.Port(), flow.ProtoTCP)
	r.OrigDstIP, r.OrigDstPort = r.Tuple.DstIP, r.Tuple.DstPort
	r.StartNanos = start.UnixNano()
	r.ExportNanos = t0.Add(at).UnixNano()
	if reason == flow.EndOfFlow {
		r.StopNanos = r.ExportNanos
	}
	r.Fwd, r.Rev = flow.Counters{Packets: fwd / 100, Bytes: fwd}, flow.Counters{Packets: rev / 100, Bytes: rev}
	r.FwdDelta, r.RevDelta = flow.Counters{Packets: fwdDelta / 100, Bytes: fwdDelta}, flow.Counters{Packets: revDelta / 100, Bytes: revDelta}
	r.Source = flow.Endpoint{NodeName: "node-a"}
	r.Destination = flow.Endpoint{PodName: "web", PodNamespace: "shop", NodeName: "node-b"}
	return Input{Record: r, Exporter: npExporterB, ExporterNode: "node-b"}
}

// npRun adds each input at its time (Expire before and after, as Run
// does), numbering them for the write-ahead log, then expires at end.
type npStep struct {
	at time.Duration
	in Input
}

func npRun(t *testing.T, c *Correlator, steps []npStep, end time.Duration) collected {
	t.Helper()
	var out collected
	for i, s := range steps {
		now := t0.Add(s.at)
		s.in.Seq = uint64(i + 1)
		c.Expire(now, out.emit)
		c.Add(&s.in, now, out.emit)
		c.Expire(now, out.emit)
	}
	c.Expire(t0.Add(end), out.emit)
	seqs := map[uint64]int{}
	for _, r := range out {
		for _, s := range r.Seqs {
			seqs[s]++
		}
	}
	for i := range steps {
		if seqs[uint64(i+1)] != 1 {
			t.Errorf("input %d is in %d rows, want 1", i+1, seqs[uint64(i+1)])
		}
	}
	return out
}

func fwdRev(fwd, rev uint64) [2]flow.Counters {
	return [2]flow.Counters{{Packets: fwd / 100, Bytes: fwd}, {Packets: rev / 100, Bytes: rev}}
}

func checkSide(t *testing.T, name string, s Side, exporter string, total, delta [2]flow.Counters) {
	t.Helper()
	if !s.Seen || s.Exporter != exporter {
		t.Errorf("%s: seen %v exporter %q, want %q", name, s.Seen, s.Exporter, exporter)
	}
	if got := [2]flow.Counters{s.Fwd, s.Rev}; got != total {
		t.Errorf("%s: totals %+v, want %+v", name, got, total)
	}
	if got := [2]flow.Counters{s.FwdDelta, s.RevDelta}; got != delta {
		t.Errorf("%s: deltas %+v, want %+v", name, got, delta)
	}
}

// checkClientRow: the row shows the connection as the client made it.
func checkClientRow(t *testing.T, r *Record, client netip.AddrPort) {
	t.Helper()
	if r.Tuple != npClientTuple(client) {
		t.Errorf("tuple %v, want the client's %v", r.Tuple, npClientTuple(client))
	}
	if got, ok := r.ProxySnat(); !ok || got != npSnat {
		t.Errorf("proxy SNAT %v (%v), want %v", got, ok, npSnat)
	}
	if r.OrigDst() != npNodePort.Addr() || r.OrigDstPort != npNodePort.Port() || r.ServicePortName != "shop/web:http" {
		t.Errorf("service %v:%d %q, want the NodePort %v shop/web:http", r.OrigDst(), r.OrigDstPort, r.ServicePortName, npNodePort)
	}
	// The client is outside: no node of the cluster is its node, though
	// node-b's half names node-a as the (translated) source.
	if r.Source != (flow.Endpoint{}) || r.FlowType != flow.FlowTypeFromExternal {
		t.Errorf("source %+v flow type %v, want an external source, from-external", r.Source, r.FlowType)
	}
	if r.Destination.PodName != "web" || r.Destination.NodeName != "node-b" {
		t.Errorf("destination %+v, want web on node-b", r.Destination)
	}
}

func TestNodePortHalvesJoinInEitherOrder(t *testing.T) {
	start := t0
	a := npHalfA(npClient, start, 2*time.Second, flow.EndOfFlow, 200_000, 30_000, 200_000, 30_000)
	b := npHalfB(start.Add(300*time.Millisecond), 2500*time.Millisecond, flow.EndOfFlow, 200_000, 30_000, 200_000, 30_000)
	for _, tc := range []struct {
		name  string
		steps []npStep
	}{
		{"entry node first", []npStep{{2 * time.Second, a}, {3 * time.Second, b}}},
		{"backend node first", []npStep{{2 * time.Second, b}, {3 * time.Second, a}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second})
			out := npRun(t, c, tc.steps, 3*time.Second)
			if len(out) != 1 {
				t.Fatalf("%d rows, want 1", len(out))
			}
			r := out[0]
			if r.Correlation != StatusCorrelated || r.EndReason != flow.EndOfFlow {
				t.Errorf("%s %s, want correlated end-of-flow", r.Correlation, r.EndReason)
			}
			checkClientRow(t, r, npClient)
			checkSide(t, "source node", r.FromSource, npExporterA, fwdRev(200_000, 30_000), fwdRev(200_000, 30_000))
			checkSide(t, "destination node", r.FromDestination, npExporterB, fwdRev(200_000, 30_000), fwdRev(200_000, 30_000))
			if r.Fwd != r.FromSource.Fwd || r.FwdDelta != r.FromSource.FwdDelta || r.Rev != r.FromSource.Rev {
				t.Errorf("main counters %+v/%+v, want the source node's", r.Fwd, r.FwdDelta)
			}
			if r.StartNanos != start.UnixNano() {
				t.Errorf("start %d, want the earlier %d", r.StartNanos, start.UnixNano())
			}
			if c.Len() != 0 || len(c.table) != 0 {
				t.Errorf("table holds %d connections (%d keys)", c.Len(), len(c.table))
			}
		})
	}
}

// Each half alone waits for its peer, then is exported once, unmatched,
// with its own view and counters.
func TestNodePortLoneHalves(t *testing.T) {
	t.Run("only the entry node's half", func(t *testing.T) {
		c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second})
		var out collected
		in := npHalfA(npClient, t0, time.Second, flow.EndOfFlow, 5000, 700, 5000, 700)
		c.Add(&in, t0.Add(time.Second), out.emit)
		c.Expire(t0.Add(5*time.Second), out.emit)
		if len(out) != 0 {
			t.Fatalf("%d rows before the correlation wait: the entry node's half passed through, so a later peer makes a second row", len(out))
		}
		c.Expire(t0.Add(6*time.Second), out.emit)
		if len(out) != 1 {
			t.Fatalf("%d rows, want 1", len(out))
		}
		r := out[0]
		if r.Correlation != StatusUnmatched || r.EndReason != flow.EndOfFlow {
			t.Errorf("%s %s, want unmatched end-of-flow", r.Correlation, r.EndReason)
		}
		checkClientRow(t, r, npClient)
		checkSide(t, "source node", r.FromSource, npExporterA, fwdRev(5000, 700), fwdRev(5000, 700))
		if r.FromDestination.Seen || r.Fwd != r.FromSource.Fwd || r.FwdDelta != r.FromSource.FwdDelta {
			t.Errorf("destination side %+v, main %+v: want only the source node's view", r.FromDestination, r.Fwd)
		}
		if c.Len() != 0 || len(c.table) != 0 {
			t.Errorf("table holds %d connections (%d keys)", c.Len(), len(c.table))
		}
	})
	t.Run("only the backend node's half", func(t *testing.T) {
		c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second})
		out := npRun(t, c, []npStep{{time.Second, npHalfB(t0, time.Second, flow.EndOfFlow, 5000, 700, 5000, 700)}}, 6*time.Second)
		if len(out) != 1 {
			t.Fatalf("%d rows, want 1", len(out))
		}
		r := out[0]
		if r.Correlation != StatusUnmatched || r.IsSNATed() || r.Tuple != npHalfB(t0, 0, 0, 0, 0, 0, 0).Record.Tuple {
			t.Errorf("%s row %v, want the backend node's view unmatched", r.Correlation, r.Tuple)
		}
		checkSide(t, "destination node", r.FromDestination, npExporterB, fwdRev(5000, 700), fwdRev(5000, 700))
		if r.FromSource.Seen || r.Fwd != r.FromDestination.Fwd || r.FwdDelta != r.FromDestination.FwdDelta {
			t.Errorf("source side %+v, main %+v: want only the destination node's view", r.FromSource, r.Fwd)
		}
	})
}

// Active updates from both nodes: every row is the joined connection, and
// each node's deltas over the rows add up to its final totals, once.
func TestNodePortActiveUpdatesCountEachByteOnce(t *testing.T) {
	c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second, ActiveTimeout: 10 * time.Second, InactiveTimeout: 60 * time.Second})
	startB := t0.Add(200 * time.Millisecond)
	steps := []npStep{
		{0, npHalfA(npClient, t0, 0, flow.EndActiveTimeout, 1000, 100, 1000, 100)},
		{1 * time.Second, npHalfB(startB, time.Second, flow.EndActiveTimeout, 1000, 100, 1000, 100)},
		{12 * time.Second, npHalfA(npClient, t0, 12*time.Second, flow.EndActiveTimeout, 3000, 300, 2000, 200)},
		{13 * time.Second, npHalfB(startB, 13*time.Second, flow.EndActiveTimeout, 3000, 300, 2000, 200)},
		{20 * time.Second, npHalfA(npClient, t0, 20*time.Second, flow.EndOfFlow, 6000, 600, 3000, 300)},
		{21 * time.Second, npHalfB(startB, 21*time.Second, flow.EndOfFlow, 6000, 600, 3000, 300)},
	}
	out := npRun(t, c, steps, 22*time.Second)
	if len(out) != 2 {
		t.Fatalf("%d rows, want 2 (one active timeout, one end-of-flow)", len(out))
	}
	var src, dst, main [2]flow.Counters
	for i, r := range out {
		if r.Correlation != StatusCorrelated {
			t.Errorf("row %d: %s, want correlated", i, r.Correlation)
		}
		checkClientRow(t, r, npClient)
		for j, d := range [][2]flow.Counters{{r.FromSource.FwdDelta, r.FromSource.RevDelta}, {r.FromDestination.FwdDelta, r.FromDestination.RevDelta}, {r.FwdDelta, r.RevDelta}} {
			acc := []*[2]flow.Counters{&src, &dst, &main}[j]
			for k := range 2 {
				acc[k].Packets += d[k].Packets
				acc[k].Bytes += d[k].Bytes
			}
		}
	}
	if want := fwdRev(6000, 600); src != want || dst != want || main != want {
		t.Errorf("deltas over the rows: source node %+v, destination node %+v, main %+v; want %+v each", src, dst, main, want)
	}
	if r := out[0]; r.EndReason != flow.EndActiveTimeout || r.FromSource.FwdDelta.Bytes != 1000 || r.FromDestination.FwdDelta.Bytes != 1000 {
		t.Errorf("first row %s with deltas %d/%d, want active with 1000/1000", r.EndReason, r.FromSource.FwdDelta.Bytes, r.FromDestination.FwdDelta.Bytes)
	}
	last := out[1]
	checkSide(t, "last row, source node", last.FromSource, npExporterA, fwdRev(6000, 600), fwdRev(5000, 500))
	checkSide(t, "last row, destination node", last.FromDestination, npExporterB, fwdRev(6000, 600), fwdRev(5000, 500))
	if last.EndReason != flow.EndOfFlow || c.Len() != 0 || len(c.table) != 0 {
		t.Errorf("last row %s, table %d; want end-of-flow and empty", last.EndReason, c.Len())
	}
}

// With the backend on the entry node there is one node and one half: it
// must not wait for a peer, and passes through at its end.
func TestNodePortToALocalPodIsOneRow(t *testing.T) {
	local := func(in Input) Input {
		in.Record.Destination.NodeName = "node-a"
		// The collector names the node: the domain is node-a's and the
		// record names node-a as the destination's node.
		in.ExporterNode = "node-a"
		return in
	}
	c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second, ActiveTimeout: 10 * time.Second})
	out := npRun(t, c, []npStep{
		{0, local(npHalfA(npClient, t0, 0, flow.EndActiveTimeout, 1000, 100, 1000, 100))},
		{12 * time.Second, local(npHalfA(npClient, t0, 12*time.Second, flow.EndOfFlow, 4000, 400, 3000, 300))},
	}, 12*time.Second)
	if len(out) != 2 {
		t.Fatalf("%d rows, want 2", len(out))
	}
	var fwd uint64
	for _, r := range out {
		if r.Correlation != StatusNotRequired || r.Tuple != npClientTuple(npClient) {
			t.Errorf("row %s %v, want not-required with the client's tuple", r.Correlation, r.Tuple)
		}
		if r.FromDestination != r.FromSource {
			t.Errorf("one node: destination side %+v, want the source node's %+v", r.FromDestination, r.FromSource)
		}
		fwd += r.FwdDelta.Bytes
	}
	if fwd != 4000 || out[1].EndReason != flow.EndOfFlow || out[0].EndReason != flow.EndActiveTimeout {
		t.Errorf("forward bytes over the rows %d, reasons %s/%s; want 4000, active then end-of-flow", fwd, out[0].EndReason, out[1].EndReason)
	}
	// A short one passes straight through at once.
	c = newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second})
	out = nil
	in := local(npHalfA(npClient, t0, time.Second, flow.EndOfFlow, 900, 90, 900, 90))
	c.Add(&in, t0.Add(time.Second), out.emit)
	if len(out) != 1 || out[0].Correlation != StatusNotRequired || out[0].FwdDelta.Bytes != 900 || c.Len() != 0 {
		t.Errorf("short connection to a local pod: %d rows, want 1 not-required at once", len(out))
	}
}

// The entry node gives the same source NAT port to another client once the
// first connection ended: the backend node's view of both is the same
// tuple. Each connection is its own row with its own client and counters,
// whether the second starts long after or while the first one still waits
// for the backend node's end-of-flow.
func TestNodePortSnatPortReusedByAnotherClient(t *testing.T) {
	client2 := netip.MustParseAddrPort("198.51.100.4:60001")
	for _, tc := range []struct {
		name   string
		start2 time.Duration
		steps  func(start2 time.Time) []npStep
	}{
		{"long after", 30 * time.Second, func(s2 time.Time) []npStep {
			return []npStep{
				{2 * time.Second, npHalfA(npClient, t0, 2*time.Second, flow.EndOfFlow, 5000, 500, 5000, 500)},
				{3 * time.Second, npHalfB(t0.Add(200*time.Millisecond), 3*time.Second, flow.EndOfFlow, 5000, 500, 5000, 500)},
				{32 * time.Second, npHalfB(s2.Add(200*time.Millisecond), 32*time.Second, flow.EndOfFlow, 7000, 900, 7000, 900)},
				{33 * time.Second, npHalfA(client2, s2, 33*time.Second, flow.EndOfFlow, 7000, 900, 7000, 900)},
			}
		}},
		{"while the first waits for its last end", 2500 * time.Millisecond, func(s2 time.Time) []npStep {
			return []npStep{
				{2 * time.Second, npHalfA(npClient, t0, 2*time.Second, flow.EndOfFlow, 5000, 500, 5000, 500)},
				{3 * time.Second, npHalfA(client2, s2, 3*time.Second, flow.EndOfFlow, 7000, 900, 7000, 900)},
				{4 * time.Second, npHalfB(t0.Add(200*time.Millisecond), 4*time.Second, flow.EndOfFlow, 5000, 500, 5000, 500)},
				{5 * time.Second, npHalfB(s2.Add(200*time.Millisecond), 5*time.Second, flow.EndOfFlow, 7000, 900, 7000, 900)},
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second, StartWindow: 5 * time.Second})
			out := npRun(t, c, tc.steps(t0.Add(tc.start2)), 40*time.Second)
			if len(out) != 2 {
				t.Fatalf("%d rows, want 2", len(out))
			}
			slices.SortFunc(out, func(a, b *Record) int { return int(a.FwdDelta.Bytes) - int(b.FwdDelta.Bytes) })
			for i, want := range []struct {
				client   netip.AddrPort
				fwd, rev uint64
			}{{npClient, 5000, 500}, {client2, 7000, 900}} {
				r := out[i]
				if r.Correlation != StatusCorrelated || r.EndReason != flow.EndOfFlow {
					t.Errorf("row %d: %s %s, want correlated end-of-flow", i, r.Correlation, r.EndReason)
				}
				checkClientRow(t, r, want.client)
				checkSide(t, want.client.String()+" source node", r.FromSource, npExporterA, fwdRev(want.fwd, want.rev), fwdRev(want.fwd, want.rev))
				checkSide(t, want.client.String()+" destination node", r.FromDestination, npExporterB, fwdRev(want.fwd, want.rev), fwdRev(want.fwd, want.rev))
			}
			if c.Len() != 0 || len(c.table) != 0 {
				t.Errorf("table holds %d connections (%d keys)", c.Len(), len(c.table))
			}
		})
	}
}
