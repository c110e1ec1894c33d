package correlate

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// oneNodeUpdate is the i-th record of a connection that a single node
// reports whole (intra-node, or to/from an external address): totals after
// i+1 updates of 1 packet/100 bytes each way, the delta since the previous
// one.
func oneNodeUpdate(ft flow.FlowType, i int, reason flow.EndReason) Input {
	in := srcHalf(reason)
	in.Record.FlowType = ft
	in.Record.Destination = flow.Endpoint{PodName: "server", PodNamespace: "ns-b", NodeName: "node-a"}
	in.Record.Fwd = flow.Counters{Packets: uint64(i + 1), Bytes: uint64(100 * (i + 1))}
	in.Record.Rev = flow.Counters{Packets: uint64(i + 1), Bytes: uint64(200 * (i + 1))}
	in.Record.FwdDelta = flow.Counters{Packets: 1, Bytes: 100}
	in.Record.RevDelta = flow.Counters{Packets: 1, Bytes: 200}
	in.Record.ExportNanos = t0.Add(time.Duration(i) * time.Second).UnixNano()
	if reason == flow.EndOfFlow {
		in.Record.StopNanos = in.Record.ExportNanos
	}
	return in
}

// Regression (issue 9): a connection one node reports, already exported
// once on the aggregator's active timeout, had its end-of-flow delayed by
// correlationWait, or exported as "active" with the entry then removed and
// no end-of-flow row at all: the export copied the source side into the
// destination side, so "every side ended" was never seen.
func TestSingleReporterEndOfFlowAfterActiveExportIsPromptAndOnce(t *testing.T) {
	for _, ft := range []flow.FlowType{flow.FlowTypeIntraNode, flow.FlowTypeToExternal, flow.FlowTypeFromExternal} {
		for _, tc := range []struct {
			name string
			wait time.Duration // correlationWait, shorter or longer than the active timeout
		}{
			{"correlationWait longer than activeTimeout", 30 * time.Second},
			{"correlationWait shorter than activeTimeout", 3 * time.Second},
		} {
			t.Run(ft.String()+"/"+tc.name, func(t *testing.T) {
				active := 10 * time.Second
				c := newTestCorrelator(t, Config{ActiveTimeout: active, InactiveTimeout: time.Minute, CorrelationWait: tc.wait})
				var out collected
				step := func(now time.Time, in *Input) {
					c.Expire(now, out.emit)
					if in != nil {
						c.Add(in, now, out.emit)
						c.Expire(now, out.emit)
					}
				}
				// Updates every 2 s; the aggregator's active timeout fires at 10 s.
				const updates = 7
				for i := 0; i < updates; i++ {
					in := oneNodeUpdate(ft, i, flow.EndActiveTimeout)
					step(t0.Add(time.Duration(i)*2*time.Second), &in)
				}
				if len(out) != 1 || out[0].EndReason != flow.EndActiveTimeout {
					t.Fatalf("before the end: %d rows, want 1 active export", len(out))
				}
				endAt := t0.Add(updates * 2 * time.Second)
				end := oneNodeUpdate(ft, updates, flow.EndOfFlow)
				step(endAt, &end)
				if len(out) != 2 {
					t.Fatalf("end-of-flow not exported at once: %d rows at its arrival, want 2", len(out))
				}
				last := out[1]
				if last.EndReason != flow.EndOfFlow {
					t.Errorf("last row reason = %v, want end-of-flow", last.EndReason)
				}
				if c.Len() != 0 {
					t.Errorf("table holds %d connections after the end, want 0", c.Len())
				}
				// Nothing more, ever.
				step(endAt.Add(10*time.Minute), nil)
				c.Flush(out.emit)
				if len(out) != 2 {
					t.Fatalf("got %d rows in all, want 2 (one active, one end-of-flow)", len(out))
				}
				var fwd, rev flow.Counters
				for _, r := range out {
					fwd.Packets += r.FwdDelta.Packets
					fwd.Bytes += r.FwdDelta.Bytes
					rev.Packets += r.RevDelta.Packets
					rev.Bytes += r.RevDelta.Bytes
				}
				if fwd != end.Record.Fwd || rev != end.Record.Rev {
					t.Errorf("deltas sum to %+v/%+v, want the totals %+v/%+v", fwd, rev, end.Record.Fwd, end.Record.Rev)
				}
				if last.Fwd != end.Record.Fwd || last.FromDestination.Fwd != end.Record.Fwd || !last.FromDestination.Ended {
					t.Errorf("end row totals %+v (destination side %+v ended=%v), want %+v on both sides",
						last.Fwd, last.FromDestination.Fwd, last.FromDestination.Ended, end.Record.Fwd)
				}
			})
		}
	}
}

// An inter-node connection only one node reports (the peer runs no agent)
// is exported alone once the wait runs out; its end-of-flow must still be
// exported at once, exactly once, with deltas adding up.
func TestUnmatchedHalfEndOfFlowAfterActiveExportIsPromptAndOnce(t *testing.T) {
	c := newTestCorrelator(t, Config{ActiveTimeout: 10 * time.Second, InactiveTimeout: time.Minute, CorrelationWait: 3 * time.Second})
	var out collected
	half := func(i int, reason flow.EndReason) Input {
		in := oneNodeUpdate(flow.FlowTypeInterNode, i, reason)
		in.Record.Destination = flow.Endpoint{}
		return in
	}
	for i := 0; i < 7; i++ {
		now := t0.Add(time.Duration(i) * 2 * time.Second)
		in := half(i, flow.EndActiveTimeout)
		c.Expire(now, out.emit)
		c.Add(&in, now, out.emit)
		c.Expire(now, out.emit)
	}
	endAt := t0.Add(14 * time.Second)
	end := half(7, flow.EndOfFlow)
	c.Expire(endAt, out.emit)
	n := len(out)
	if n == 0 {
		t.Fatal("no export before the end")
	}
	c.Add(&end, endAt, out.emit)
	c.Expire(endAt, out.emit)
	if len(out) != n+1 || out[n].EndReason != flow.EndOfFlow || out[n].Correlation != StatusUnmatched {
		t.Fatalf("at the end: %d rows (last %v), want one more, end-of-flow, unmatched", len(out), out[len(out)-1].EndReason)
	}
	c.Expire(endAt.Add(10*time.Minute), out.emit)
	c.Flush(out.emit)
	var fwd flow.Counters
	ends := 0
	for _, r := range out {
		fwd.Packets += r.FwdDelta.Packets
		fwd.Bytes += r.FwdDelta.Bytes
		if r.EndReason == flow.EndOfFlow {
			ends++
		}
	}
	if fwd != end.Record.Fwd || ends != 1 {
		t.Errorf("deltas sum to %+v with %d end-of-flow rows, want %+v and 1", fwd, ends, end.Record.Fwd)
	}
}
