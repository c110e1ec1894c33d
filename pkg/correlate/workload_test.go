package correlate

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// Each node knows its own pod's workload: the merged row carries the source
// pod's from the source node and the destination pod's from the destination
// node, whichever half came first; a node's view of the far end never
// overrides the owning node's.
func TestCorrelatedRowCarriesBothEndsWorkloads(t *testing.T) {
	src, dst := srcHalf(flow.EndOfFlow), dstHalf(flow.EndOfFlow)
	src.Record.Source.WorkloadKind, src.Record.Source.WorkloadName = "Deployment", "client"
	dst.Record.Destination.WorkloadKind, dst.Record.Destination.WorkloadName = "StatefulSet", "server"
	// The destination node also resolved the source pod, to a stale owner
	// (a ReplicaSet it has not seen the Deployment of).
	dst.Record.Source = flow.Endpoint{PodName: "client", PodNamespace: "ns-a", NodeName: "node-a",
		WorkloadKind: "ReplicaSet", WorkloadName: "client-5d8f"}
	// Naming both pods, a half is told apart by its exporter's node.
	src.ExporterNode, dst.ExporterNode = "node-a", "node-b"
	for _, tc := range []struct {
		name  string
		order []Input
	}{
		{"source half first", []Input{src, dst}},
		{"destination half first", []Input{dst, src}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second})
			var out collected
			for i, in := range tc.order {
				now := t0.Add(time.Duration(i) * time.Second)
				c.Add(&in, now, out.emit)
				c.Expire(now, out.emit)
			}
			if len(out) != 1 || out[0].Correlation != StatusCorrelated {
				t.Fatalf("got %d rows, want one correlated", len(out))
			}
			r := out[0]
			if r.Source.WorkloadKind != "Deployment" || r.Source.WorkloadName != "client" {
				t.Errorf("source workload %s/%s, want Deployment/client", r.Source.WorkloadKind, r.Source.WorkloadName)
			}
			if r.Destination.WorkloadKind != "StatefulSet" || r.Destination.WorkloadName != "server" {
				t.Errorf("destination workload %s/%s, want StatefulSet/server", r.Destination.WorkloadKind, r.Destination.WorkloadName)
			}
		})
	}
}

// A half that arrives alone (its peer never does) still carries its end.
func TestUnmatchedHalfKeepsItsWorkload(t *testing.T) {
	c := newTestCorrelator(t, Config{CorrelationWait: time.Second})
	var out collected
	dst := dstHalf(flow.EndOfFlow)
	dst.Record.Destination.WorkloadKind, dst.Record.Destination.WorkloadName = "DaemonSet", "agent"
	c.Add(&dst, t0, out.emit)
	c.Expire(t0.Add(10*time.Second), out.emit)
	if len(out) != 1 || out[0].Correlation != StatusUnmatched {
		t.Fatalf("got %d rows, want one unmatched", len(out))
	}
	if d := out[0].Destination; d.WorkloadKind != "DaemonSet" || d.WorkloadName != "agent" || out[0].Source.WorkloadName != "" {
		t.Errorf("workloads %+v / %+v", out[0].Source, d)
	}
}
