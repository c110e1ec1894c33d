package correlate

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

var t0 = time.Unix(1_700_000_000, 0)

func tuple() flow.Tuple {
	return flow.NewTuple(netip.MustParseAddr("10.0.1.5"), netip.MustParseAddr("10.0.2.7"), 40000, 8080, flow.ProtoTCP)
}

// srcHalf is what the client pod's node exports: it knows the source pod
// and did the Service DNAT.
func srcHalf(reason flow.EndReason) Input {
	r := flow.Record{FlowType: flow.FlowTypeInterNode, EndReason: reason}
	r.Tuple = tuple()
	r.OrigDstIP = netip.MustParseAddr("10.96.0.10").As16()
	r.OrigDstPort = 80
	r.StartNanos = t0.UnixNano()
	r.ExportNanos = t0.Add(2 * time.Second).UnixNano()
	r.Fwd = flow.Counters{Packets: 10, Bytes: 1000}
	r.Rev = flow.Counters{Packets: 8, Bytes: 8000}
	r.FwdDelta, r.RevDelta = r.Fwd, r.Rev
	r.TCPState = flow.TCPStateEstablished
	r.Source = flow.Endpoint{PodName: "client", PodNamespace: "ns-a", NodeName: "node-a"}
	r.ServicePortName = "ns-b/web:http"
	r.ClusterIP = true
	return Input{Record: r, Exporter: "node-a"}
}

// dstHalf is what the server pod's node exports; its clock runs 1 s late
// and it counted slightly fewer packets.
func dstHalf(reason flow.EndReason) Input {
	r := flow.Record{FlowType: flow.FlowTypeInterNode, EndReason: reason}
	r.Tuple = tuple()
	r.OrigDstIP, r.OrigDstPort = r.Tuple.DstIP, r.Tuple.DstPort
	r.StartNanos = t0.Add(time.Second).UnixNano()
	r.ExportNanos = t0.Add(3 * time.Second).UnixNano()
	r.Fwd = flow.Counters{Packets: 9, Bytes: 900}
	r.Rev = flow.Counters{Packets: 8, Bytes: 8000}
	r.FwdDelta, r.RevDelta = r.Fwd, r.Rev
	r.Destination = flow.Endpoint{PodName: "server", PodNamespace: "ns-b", NodeName: "node-b"}
	return Input{Record: r, Exporter: "node-b"}
}

func newTestCorrelator(t *testing.T, cfg Config) *Correlator {
	t.Helper()
	c, err := New(cfg, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

type collected []*Record

func (c *collected) emit(r *Record) { *c = append(*c, r) }

func TestCorrelationMergesHalvesInEitherOrder(t *testing.T) {
	for _, tc := range []struct {
		name  string
		order []Input
	}{
		{"source half first", []Input{srcHalf(flow.EndOfFlow), dstHalf(flow.EndOfFlow)}},
		{"destination half first", []Input{dstHalf(flow.EndOfFlow), srcHalf(flow.EndOfFlow)}},
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
				t.Fatalf("got %d records, want 1 merged record at once", len(out))
			}
			r := out[0]
			if r.Correlation != StatusCorrelated {
				t.Errorf("Correlation = %v, want correlated", r.Correlation)
			}
			if r.Source.PodName != "client" || r.Source.NodeName != "node-a" ||
				r.Destination.PodName != "server" || r.Destination.PodNamespace != "ns-b" || r.Destination.NodeName != "node-b" {
				t.Errorf("endpoints = %+v / %+v, want both sides' pods", r.Source, r.Destination)
			}
			if r.OrigDst() != netip.MustParseAddr("10.96.0.10") || r.ServicePortName != "ns-b/web:http" || !r.ClusterIP {
				t.Errorf("service fields lost: origDst=%v svc=%q clusterIP=%v", r.OrigDst(), r.ServicePortName, r.ClusterIP)
			}
			if r.FromSource.Fwd.Packets != 10 || r.FromDestination.Fwd.Packets != 9 {
				t.Errorf("per-node packets = %d/%d, want 10/9", r.FromSource.Fwd.Packets, r.FromDestination.Fwd.Packets)
			}
			if r.Fwd.Packets != 10 || r.FwdDelta.Bytes != 1000 {
				t.Errorf("main counters = %+v delta %+v, want the source node's", r.Fwd, r.FwdDelta)
			}
			if r.StartNanos != t0.UnixNano() {
				t.Errorf("StartNanos = %d, want the earlier start", r.StartNanos)
			}
			// 1000 bytes over the 2 s from start to the source node's export.
			if r.FromSource.Throughput != 4000 || r.Throughput != 4000 {
				t.Errorf("throughput = %d (source node %d), want 4000 bit/s", r.Throughput, r.FromSource.Throughput)
			}
			if r.EndReason != flow.EndOfFlow {
				t.Errorf("EndReason = %v, want end-of-flow", r.EndReason)
			}
			if c.Len() != 0 {
				t.Errorf("table holds %d connections after both ends, want 0", c.Len())
			}
		})
	}
}

func TestUnmatchedHalfIsSentAloneAfterWaitAndFlagged(t *testing.T) {
	for _, tc := range []struct {
		name string
		half Input
		want func(*Record) bool
	}{
		{"source half", srcHalf(flow.EndOfFlow), func(r *Record) bool { return r.Source.PodName == "client" && r.FromSource.Seen }},
		{"destination half", dstHalf(flow.EndOfFlow), func(r *Record) bool {
			return r.Destination.PodName == "server" && r.Fwd.Packets == 9 && !r.FromSource.Seen
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wait := 5 * time.Second
			c := newTestCorrelator(t, Config{CorrelationWait: wait})
			var out collected
			c.Add(&tc.half, t0, out.emit)
			c.Expire(t0.Add(wait-time.Millisecond), out.emit)
			if len(out) != 0 {
				t.Fatalf("half exported before the wait ran out")
			}
			c.Expire(t0.Add(wait), out.emit)
			if len(out) != 1 {
				t.Fatalf("got %d records after the wait, want 1", len(out))
			}
			if out[0].Correlation != StatusUnmatched || !tc.want(out[0]) {
				t.Errorf("record = %+v, want the half flagged unmatched", out[0])
			}
			if c.Len() != 0 {
				t.Errorf("an ended unmatched half stayed in the table")
			}
		})
	}
}

func TestLatePeerJoinsConnectionExportedAsUnmatched(t *testing.T) {
	c := newTestCorrelator(t, Config{CorrelationWait: 2 * time.Second, ActiveTimeout: 10 * time.Second})
	var out collected
	s := srcHalf(flow.EndActiveTimeout)
	c.Add(&s, t0, out.emit)
	c.Expire(t0.Add(2*time.Second), out.emit)
	d := dstHalf(flow.EndActiveTimeout)
	c.Add(&d, t0.Add(3*time.Second), out.emit)
	c.Expire(t0.Add(12*time.Second), out.emit)
	if len(out) != 2 {
		t.Fatalf("got %d records, want an unmatched one then a correlated one", len(out))
	}
	if out[0].Correlation != StatusUnmatched || out[1].Correlation != StatusCorrelated {
		t.Errorf("statuses = %v, %v; want unmatched then correlated", out[0].Correlation, out[1].Correlation)
	}
	if out[1].Destination.PodName != "server" {
		t.Errorf("late peer's fields missing: %+v", out[1].Destination)
	}
}

func TestL7FieldsUnionAcrossHalves(t *testing.T) {
	for _, tc := range []struct {
		name               string
		srcHTTP, dstHTTP   string
		srcProto, dstProto string
		wantHTTP, wantProt string
	}{
		{"empty destination value does not wipe the source's", `{"0":"GET /a"}`, "", "http", "", `{"0":"GET /a"}`, "http"},
		{"empty source value does not wipe the destination's", "", `{"0":"GET /a"}`, "", "http", `{"0":"GET /a"}`, "http"},
		{"transactions from both halves are united", `{"0":"GET /a"}`, `{"1":"GET /b"}`, "http", "http", `{"0":"GET /a","1":"GET /b"}`, "http"},
		{"empty object does not wipe a full one", `{"2":{"url":"/x"}}`, `{}`, "", "http", `{"2":{"url":"/x"}}`, "http"},
		{"invalid JSON on one side keeps the valid side", `{"0":"GET /a"}`, `{"0":`, "http", "", `{"0":"GET /a"}`, "http"},
		{"null transaction value is replaced", `{"0":null}`, `{"0":"GET /a"}`, "", "", `{"0":"GET /a"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCorrelator(t, Config{})
			var out collected
			s, d := srcHalf(flow.EndOfFlow), dstHalf(flow.EndOfFlow)
			s.Record.L7 = flow.L7{AppProtocolName: tc.srcProto, HTTPVals: tc.srcHTTP}
			d.Record.L7 = flow.L7{AppProtocolName: tc.dstProto, HTTPVals: tc.dstHTTP}
			c.Add(&s, t0, out.emit)
			c.Add(&d, t0, out.emit)
			c.Expire(t0, out.emit)
			if len(out) != 1 {
				t.Fatalf("got %d records, want 1", len(out))
			}
			if got := out[0].L7; got.HTTPVals != tc.wantHTTP || got.AppProtocolName != tc.wantProt {
				t.Errorf("L7 = %+v, want httpVals %s appProtocolName %q", got, tc.wantHTTP, tc.wantProt)
			}
		})
	}
}

func TestFlowsOneNodeSeesWholePassThroughWithoutWaiting(t *testing.T) {
	for _, ft := range []flow.FlowType{flow.FlowTypeIntraNode, flow.FlowTypeToExternal, flow.FlowTypeFromExternal} {
		t.Run(ft.String(), func(t *testing.T) {
			c := newTestCorrelator(t, Config{CorrelationWait: time.Hour})
			var out collected
			in := srcHalf(flow.EndOfFlow)
			in.Record.FlowType = ft
			in.Record.Destination = flow.Endpoint{PodName: "server", PodNamespace: "ns-b", NodeName: "node-a"}
			c.Add(&in, t0, out.emit)
			c.Expire(t0, out.emit)
			if len(out) != 1 {
				t.Fatalf("got %d records at once, want 1", len(out))
			}
			r := out[0]
			if r.Correlation != StatusNotRequired || r.Destination.PodName != "server" {
				t.Errorf("record = %+v, want it as received, not-required", r)
			}
			if r.FromSource.Fwd != r.FromDestination.Fwd || r.FromDestination.Fwd.Packets != 10 {
				t.Errorf("per-node counters = %+v / %+v, want the one node's in both", r.FromSource.Fwd, r.FromDestination.Fwd)
			}
		})
	}
}

func TestAggregationTimeouts(t *testing.T) {
	active, inactive := 10*time.Second, 4*time.Second
	update := func(i int) Input {
		in := srcHalf(flow.EndActiveTimeout)
		in.Record.FlowType = flow.FlowTypeIntraNode
		in.Record.FwdDelta = flow.Counters{Packets: 1, Bytes: 100}
		in.Record.Fwd = flow.Counters{Packets: uint64(i + 1), Bytes: uint64(100 * (i + 1))}
		in.Record.ExportNanos = t0.Add(time.Duration(i) * time.Second).UnixNano()
		return in
	}
	for _, tc := range []struct {
		name        string
		updatesEvry time.Duration
		updates     int
		until       time.Duration
		wantReasons []flow.EndReason
		wantDeltas  []uint64
	}{
		{"updates within the active timeout are one record", time.Second, 5, 5 * time.Second, nil, nil},
		{"steady updates export on the active timeout with summed deltas", 2 * time.Second, 10, 20 * time.Second,
			[]flow.EndReason{flow.EndActiveTimeout, flow.EndActiveTimeout}, []uint64{5, 5}},
		{"silence exports on the inactive timeout and forgets", time.Second, 2, 5 * time.Second,
			[]flow.EndReason{flow.EndIdleTimeout}, []uint64{2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCorrelator(t, Config{ActiveTimeout: active, InactiveTimeout: inactive})
			var out collected
			for i := 0; i < tc.updates; i++ {
				now := t0.Add(time.Duration(i) * tc.updatesEvry)
				c.Expire(now, out.emit)
				in := update(i)
				c.Add(&in, now, out.emit)
			}
			c.Expire(t0.Add(tc.until), out.emit)
			if len(out) != len(tc.wantReasons) {
				t.Fatalf("got %d records, want %d", len(out), len(tc.wantReasons))
			}
			for i, r := range out {
				if r.EndReason != tc.wantReasons[i] || r.FwdDelta.Packets != tc.wantDeltas[i] {
					t.Errorf("record %d: reason %v delta %d, want %v %d", i, r.EndReason, r.FwdDelta.Packets, tc.wantReasons[i], tc.wantDeltas[i])
				}
			}
		})
	}
}

func TestSameTupleOutsideStartWindowIsAnotherConnection(t *testing.T) {
	c := newTestCorrelator(t, Config{StartWindow: 5 * time.Second})
	var out collected
	a := srcHalf(flow.EndActiveTimeout)
	b := srcHalf(flow.EndActiveTimeout)
	b.Record.StartNanos = t0.Add(time.Minute).UnixNano()
	c.Add(&a, t0, out.emit)
	c.Add(&b, t0, out.emit)
	if c.Len() != 2 {
		t.Errorf("Len = %d, want 2 connections for a reused port", c.Len())
	}
	c.Flush(out.emit)
	if len(out) != 2 || c.Len() != 0 {
		t.Errorf("Flush exported %d and left %d, want 2 and 0", len(out), c.Len())
	}
}

func TestFullTableExportsAtOnceInsteadOfDropping(t *testing.T) {
	c := newTestCorrelator(t, Config{MaxConnections: 1})
	var out collected
	a := srcHalf(flow.EndActiveTimeout)
	b := srcHalf(flow.EndActiveTimeout)
	b.Record.Tuple.SrcPort++
	c.Add(&a, t0, out.emit)
	c.Add(&b, t0, out.emit)
	if len(out) != 1 || out[0].Tuple.SrcPort != b.Record.Tuple.SrcPort || out[0].Correlation != StatusUnmatched {
		t.Fatalf("overflow output = %v, want the second connection exported unmatched", out)
	}
}

func TestRunFlushesPendingOnShutdown(t *testing.T) {
	c := newTestCorrelator(t, Config{CorrelationWait: time.Hour})
	in := make(chan Input, 1)
	var out collected
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx, in, out.emit) }()
	in <- srcHalf(flow.EndActiveTimeout)
	close(in)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its input closed")
	}
	cancel()
	if len(out) != 1 || out[0].EndReason != flow.EndForced || out[0].Correlation != StatusUnmatched {
		t.Fatalf("flushed %v, want the pending half forced out and flagged unmatched", out)
	}
}

func TestConfigValidationNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{CorrelationWait: -1}, "correlationWait"},
		{Config{StartWindow: -1}, "startWindow"},
		{Config{ActiveTimeout: -1}, "activeTimeout"},
		{Config{InactiveTimeout: -time.Second}, "inactiveTimeout"},
		{Config{MaxConnections: -1}, "maxConnections"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			_, err := New(tc.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New error = %v, want one naming %s", err, tc.want)
			}
		})
	}
}

func TestSilentConnectionIsForgottenWithoutAnotherRow(t *testing.T) {
	c := newTestCorrelator(t, Config{ActiveTimeout: 2 * time.Second, InactiveTimeout: 5 * time.Second})
	var out collected
	in := srcHalf(flow.EndActiveTimeout)
	in.Record.FlowType = flow.FlowTypeIntraNode
	c.Add(&in, t0, out.emit)
	c.Expire(t0.Add(2*time.Second), out.emit)
	if len(out) != 1 || out[0].EndReason != flow.EndActiveTimeout {
		t.Fatalf("got %d records, want one active export", len(out))
	}
	c.Expire(t0.Add(10*time.Second), out.emit)
	if len(out) != 1 {
		t.Errorf("got %d records, want no zero-delta row for a connection with no news", len(out))
	}
	if c.Len() != 0 {
		t.Errorf("silent connection still held")
	}
}

// Agents that know every pod (an inventory, or Kubernetes without
// ownNodeOnly) fill both ends in both halves: only the exporting node tells
// the sides apart, whichever half arrives first.
func TestHalvesNamingBothPodsAreSidedByExportingNode(t *testing.T) {
	both := func(in Input, node string) Input {
		in.Record.Source = flow.Endpoint{PodName: "client", PodNamespace: "ns-a", NodeName: "node-a"}
		in.Record.Destination = flow.Endpoint{PodName: "server", PodNamespace: "ns-b", NodeName: "node-b"}
		// The collector's own name for an exporter is its address, which
		// never matches a node name.
		in.Exporter = "127.0.0.1/" + node
		in.ExporterNode = node
		return in
	}
	for _, tc := range []struct {
		name  string
		order []Input
	}{
		{"source half first", []Input{both(srcHalf(flow.EndOfFlow), "node-a"), both(dstHalf(flow.EndOfFlow), "node-b")}},
		{"destination half first", []Input{both(dstHalf(flow.EndOfFlow), "node-b"), both(srcHalf(flow.EndOfFlow), "node-a")}},
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
				t.Fatalf("got %d records, want 1 merged record", len(out))
			}
			r := out[0]
			if r.FromSource.Fwd.Packets != 10 || r.FromDestination.Fwd.Packets != 9 {
				t.Errorf("per-node packets source/destination = %d/%d, want 10/9 (node-a's, node-b's)", r.FromSource.Fwd.Packets, r.FromDestination.Fwd.Packets)
			}
			if r.FromSource.Exporter != "127.0.0.1/node-a" || r.FromDestination.Exporter != "127.0.0.1/node-b" {
				t.Errorf("exporters source/destination = %q/%q", r.FromSource.Exporter, r.FromDestination.Exporter)
			}
		})
	}
}
