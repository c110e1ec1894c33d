package correlate

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// mergeHalves correlates src and dst (in that order or reversed) and
// returns the one row.
func mergeHalves(t *testing.T, order []Input) *Record {
	t.Helper()
	c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second})
	var out collected
	for i := range order {
		now := t0.Add(time.Duration(i) * time.Second)
		c.Add(&order[i], now, out.emit)
		c.Expire(now, out.emit)
	}
	if len(out) != 1 || out[0].Correlation != StatusCorrelated {
		t.Fatalf("got %d rows, want one correlated", len(out))
	}
	return out[0]
}

// The client's node sees the client's socket (its RTT samples, its
// retransmissions, the RST it sent) and drops on its side; the server's
// node sees the server's socket, the same RST arriving, and its drops.
func TestCorrelatedRowMergesBothNodesHealth(t *testing.T) {
	src, dst := srcHalf(flow.EndOfFlow), dstHalf(flow.EndOfFlow)
	src.Record.Health = flow.Health{
		RTTMinMicros: 200, RTTAvgMicros: 300, RTTMaxMicros: 900, RTTSamples: 3,
		FwdRetransmits: 2, FwdResets: 1, EstablishMicros: 450, ZeroWindows: 1,
		FwdDrops: 4, DropReason: "NETFILTER_DROP",
	}
	src.Record.DestinationName = "" // not an external destination
	dst.Record.Health = flow.Health{
		RTTMinMicros: 150, RTTAvgMicros: 250, RTTMaxMicros: 400, RTTSamples: 1,
		RevRetransmits: 5, FwdResets: 1, ZeroWindows: 2,
		FwdDrops: 1, RevDrops: 6, DropReason: "TCP_INVALID_SEQUENCE",
	}
	want := flow.Health{
		RTTMinMicros: 150, RTTMaxMicros: 900, RTTSamples: 4,
		RTTAvgMicros:   (300*3 + 250*1 + 2) / 4, // 287.5 rounds to 288
		FwdRetransmits: 2, RevRetransmits: 5,
		FwdResets:       1, // the same RST, seen leaving and arriving
		EstablishMicros: 450, ZeroWindows: 3,
		FwdDrops: 5, RevDrops: 6,
		DropReason: "TCP_INVALID_SEQUENCE", // the half with 7 drops, not 4
	}
	for _, tc := range []struct {
		name  string
		order []Input
	}{{"source half first", []Input{src, dst}}, {"destination half first", []Input{dst, src}}} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mergeHalves(t, tc.order).Health; got != want {
				t.Errorf("merged health\n %+v\nwant\n %+v", got, want)
			}
		})
	}
}

// A half without RTT samples is no sample of 0 µs: the other half's RTT
// passes unchanged.
func TestHalfWithoutRTTSamplesLeavesRTTAlone(t *testing.T) {
	src, dst := srcHalf(flow.EndOfFlow), dstHalf(flow.EndOfFlow)
	dst.Record.Health = flow.Health{RTTMinMicros: 1000, RTTAvgMicros: 1200, RTTMaxMicros: 1500, RTTSamples: 7}
	for _, order := range [][]Input{{src, dst}, {dst, src}} {
		got := mergeHalves(t, order).Health
		if got.RTTMinMicros != 1000 || got.RTTAvgMicros != 1200 || got.RTTMaxMicros != 1500 || got.RTTSamples != 7 {
			t.Errorf("RTT %d/%d/%d over %d samples, want the destination half's 1000/1200/1500 over 7",
				got.RTTMinMicros, got.RTTAvgMicros, got.RTTMaxMicros, got.RTTSamples)
		}
	}
}

// Resets seen by only one node (the receiver's socket was gone, or the
// RST came from a node without the programs) are still counted, and a
// node's several records of one period sum before the two nodes compare.
func TestResetsTakeTheLargerNodeSum(t *testing.T) {
	c := newTestCorrelator(t, Config{CorrelationWait: 5 * time.Second, ActiveTimeout: time.Minute, InactiveTimeout: time.Minute})
	var out collected
	a1, a2 := srcHalf(flow.EndActiveTimeout), srcHalf(flow.EndOfFlow)
	a1.Record.Health.RevResets, a2.Record.Health.RevResets = 1, 1
	a2.Record.ExportNanos = t0.Add(4 * time.Second).UnixNano()
	b := dstHalf(flow.EndOfFlow)
	b.Record.Health.RevResets, b.Record.Health.FwdResets = 1, 3
	for i, in := range []Input{a1, b, a2} {
		now := t0.Add(time.Duration(i) * time.Second)
		c.Add(&in, now, out.emit)
		c.Expire(now, out.emit)
	}
	if len(out) != 1 {
		t.Fatalf("got %d rows, want 1", len(out))
	}
	if h := out[0].Health; h.RevResets != 2 || h.FwdResets != 3 {
		t.Errorf("resets fwd %d rev %d, want 3 (destination node only) and 2 (source node's two records)", h.FwdResets, h.RevResets)
	}
}

// Health is per period like the deltas: a row carries what happened since
// the connection's previous row, and the next row starts from zero. The
// destination name describes the connection and stays.
func TestHealthIsPerRowAndTheNameStays(t *testing.T) {
	active := 10 * time.Second
	c := newTestCorrelator(t, Config{ActiveTimeout: active, InactiveTimeout: time.Minute})
	var out collected
	in := srcHalf(flow.EndActiveTimeout)
	in.Record.FlowType = flow.FlowTypeToExternal
	in.Record.DestinationName = "api.example.com"
	in.Record.Health = flow.Health{RTTMinMicros: 10, RTTAvgMicros: 10, RTTMaxMicros: 10, RTTSamples: 1,
		FwdRetransmits: 1, EstablishMicros: 77, FwdDrops: 2, DropReason: "NETFILTER_DROP"}
	c.Add(&in, t0, out.emit)
	in2 := in
	in2.Record.DestinationName = "" // its TTL ran out on the agent
	in2.Record.Health = flow.Health{RTTMinMicros: 30, RTTAvgMicros: 40, RTTMaxMicros: 50, RTTSamples: 2}
	in2.Record.ExportNanos = t0.Add(11 * time.Second).UnixNano()
	c.Expire(t0.Add(active), out.emit)
	c.Add(&in2, t0.Add(11*time.Second), out.emit)
	c.Expire(t0.Add(2*active+time.Second), out.emit)
	if len(out) != 2 {
		t.Fatalf("got %d rows, want 2", len(out))
	}
	if h := out[0].Health; h.FwdRetransmits != 1 || h.EstablishMicros != 77 || h.FwdDrops != 2 || h.RTTSamples != 1 {
		t.Errorf("first row's health %+v", h)
	}
	want := flow.Health{RTTMinMicros: 30, RTTAvgMicros: 40, RTTMaxMicros: 50, RTTSamples: 2}
	if h := out[1].Health; h != want {
		t.Errorf("second row's health %+v, want only the second period's %+v", h, want)
	}
	for i, r := range out {
		if r.DestinationName != "api.example.com" {
			t.Errorf("row %d: destination name %q", i, r.DestinationName)
		}
	}
}

// The source node's resolver view names the destination; the destination
// node's value only fills a gap.
func TestDestinationNamePrefersTheSourceNode(t *testing.T) {
	src, dst := srcHalf(flow.EndOfFlow), dstHalf(flow.EndOfFlow)
	src.Record.DestinationName, dst.Record.DestinationName = "web.shop.example", "other.example"
	for _, order := range [][]Input{{src, dst}, {dst, src}} {
		if got := mergeHalves(t, order).DestinationName; got != "web.shop.example" {
			t.Errorf("destination name %q, want the source node's", got)
		}
	}
	src.Record.DestinationName = ""
	if got := mergeHalves(t, []Input{src, dst}).DestinationName; got != "other.example" {
		t.Errorf("destination name %q, want the destination node's when the source's is empty", got)
	}
}

func TestHealthCountsSaturate(t *testing.T) {
	var a healthAcc
	var m flow.Health
	big := flow.Health{FwdDrops: 1<<32 - 10, RTTSamples: 1<<32 - 1, RTTAvgMicros: 1<<32 - 1, RTTMaxMicros: 1, RTTMinMicros: 1}
	a.add(&m, &big, sideSource)
	a.add(&m, &big, sideDestination)
	if m.FwdDrops != 1<<32-1 || m.RTTSamples != 1<<32-1 || m.RTTAvgMicros != 1<<32-1 {
		t.Errorf("saturating sums: %+v", m)
	}
}
