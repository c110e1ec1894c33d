//go:build integration

package packetdrops

import (
	"fmt"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/netnstest"
)

// TestReviewDuplicateSegmentsAreNotLostPackets: a TCP segment that arrives
// twice (a spurious retransmission after an early RTO, a duplicating
// link) is discarded the second time by the receiver with
// SKB_DROP_REASON_TCP_OLD_DATA. Nothing of the flow was lost: every byte
// arrived once. The package keeps only "reasons that mean a lost packet",
// yet the flow reports a drop per duplicate. Here an nft dup statement in
// the node duplicates the client's data segments.
func TestReviewDuplicateSegmentsAreNotLostPackets(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "rvdup", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	a, b := node.Pod("a"), node.Pod("b")
	srv, err := b.ListenTCP(7300)
	if err != nil {
		t.Fatal(err)
	}
	nft(t, node, fmt.Sprintf(`table ip %[1]s {
	counter duped {}
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip saddr %[2]s ip daddr %[3]s tcp dport 7300 ip length > 100 counter name duped dup to %[3]s device "%[4]s"
	}
}
`, nftTestTable, a.IPv4, b.IPv4, b.HostVeth))
	d, reg, _ := startDrops(t, Config{}, nil)
	tr, err := netnstest.SendExactly(a, srv.Addr(), 20000, 100)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Sent != 20000 || tr.Received != 100 {
		t.Fatalf("transfer %+v: want 20000 sent, 100 received", tr)
	}
	out, _ := node.Exec("nft", "list", "counter", "ip", nftTestTable, "duped")
	t.Logf("dup rule: %s", out)
	conn := flow.Conn{Tuple: flow.NewTuple(tr.Local.Addr(), tr.Remote.Addr(), tr.Local.Port(), tr.Remote.Port(), flow.ProtoTCP)}
	conn.OrigDstIP, conn.OrigDstPort = conn.Tuple.DstIP, conn.Tuple.DstPort
	fwd, rev, reasons := collect(t, d, conn, 1)
	time.Sleep(1500 * time.Millisecond)
	if fwd != 0 || rev != 0 {
		t.Errorf("every byte was delivered (the duplicates were extra copies), yet the flow carries fwd %d rev %d drops (reasons %v)",
			fwd, rev, reasons)
	}
	if v := metric(t, reg, "flowlens_packetdrops_total", "TCP_OLD_DATA"); v != 0 {
		t.Errorf("flowlens_packetdrops_total{reason=TCP_OLD_DATA} = %v: discarded duplicates counted as lost packets", v)
	}
}
