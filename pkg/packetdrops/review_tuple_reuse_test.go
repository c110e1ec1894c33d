package packetdrops

import (
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
)

// TestReviewLateDropNotGivenToNextConnectionOfTuple: the package doc says
// a drop that arrives after the record that would have carried it goes
// "after the connection's last one, to unattributed when the TTL ends".
// The table is keyed by tuple only, so a new connection reusing the tuple
// within the TTL (a client's ephemeral port cycling, a resolver's fixed
// source port, ping's ICMP identifier) takes the old connection's drops:
// drops that happened before the new connection even started.
func TestReviewLateDropNotGivenToNextConnectionOfTuple(t *testing.T) {
	d, clk, m := newTestDrops(t, Config{TTL: 2 * time.Minute})
	tup := tuple("10.0.0.1", "10.0.0.2", 40000, 80, flow.ProtoTCP)

	// Connection 1 ends; its last record is made before the drop's event
	// is read from the ring.
	first := flow.Record{Conn: flow.Conn{Tuple: tup, ID: 1, StartNanos: clk.t.Add(-time.Second).UnixNano()}, EndReason: flow.EndOfFlow}
	first.OrigDstIP, first.OrigDstPort = tup.DstIP, tup.DstPort
	d.Enrich(&first)
	clk.t = clk.t.Add(50 * time.Millisecond)
	d.handle(event{tuple: tup.Reverse(), reason: rNetfilter}) // connection 1's late drop

	// Connection 2 on the same tuple starts 10 s later; nothing of it
	// was dropped.
	clk.t = clk.t.Add(10 * time.Second)
	second := flow.Record{Conn: flow.Conn{Tuple: tup, ID: 2, StartNanos: clk.t.UnixNano()}, EndReason: flow.EndActiveTimeout}
	second.OrigDstIP, second.OrigDstPort = tup.DstIP, tup.DstPort
	clk.t = clk.t.Add(5 * time.Second)
	d.Enrich(&second)
	if second.Health.FwdDrops != 0 || second.Health.RevDrops != 0 {
		t.Errorf("connection 2 (started %s after the drop) carries connection 1's drop: fwd %d rev %d reason %q",
			10*time.Second, second.Health.FwdDrops, second.Health.RevDrops, second.Health.DropReason)
	}
	clk.t = clk.t.Add(3 * time.Minute)
	d.expire()
	if got := counterValue(t, m.unattributed, "NETFILTER_DROP"); got != 1 {
		t.Errorf("unattributed{NETFILTER_DROP} = %v, want 1 (the drop after connection 1's last record)", got)
	}
}
