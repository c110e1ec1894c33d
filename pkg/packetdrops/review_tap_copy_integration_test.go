//go:build integration

package packetdrops

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/netns"
	"github.com/flowlens/flowlens/test/netnstest"
)

// TestReviewTapCopiesLostAreNotFlowDrops: a packet capture on the node
// (tcpdump, an operator's IDS, kubectl sniff) gets a clone of every
// packet; when it reads too slowly the kernel frees the clone with
// SKB_DROP_REASON_PACKET_SOCK_ERROR (af_packet's receive buffer full).
// The original went on and was delivered: the flow lost nothing. Only
// the mirror's own flc* capture is filtered today.
func TestReviewTapCopiesLostAreNotFlowDrops(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "rvtap", Pods: []netnstest.PodSpec{{Name: "a"}, {Name: "b"}}})
	a, b := node.Pod("a"), node.Pod("b")
	srv, err := b.ListenUDP(7200)
	if err != nil {
		t.Fatal(err)
	}
	// A capture on the node that never reads: a tiny receive buffer fills
	// at once.
	var fd int
	if err := netns.Do(node.NetnsPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(a.HostVeth)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	}); err != nil {
		t.Fatalf("capture socket: %v", err)
	}
	defer unix.Close(fd)

	d, reg, _ := startDrops(t, Config{}, nil)
	c, err := a.DialUDP(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 40
	sendUDP(t, c, n, 400, 50) // replies leave through a's host veth: the tap clones them
	waitFor(t, func() bool { return srv.Stats().Conns == n }, "server received every datagram")
	// Every reply reached the client.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	for i := range n {
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
	}
	conn := udpConn(t, c, srv.Addr())
	conn.OrigDstIP, conn.OrigDstPort = conn.Tuple.DstIP, conn.Tuple.DstPort
	fwd, rev, reasons := collect(t, d, conn, 1)
	time.Sleep(1500 * time.Millisecond)
	if fwd != 0 || rev != 0 {
		t.Errorf("the server received all %d datagrams, yet the flow carries fwd %d rev %d drops (reasons %v): a tap's lost copies",
			n, fwd, rev, reasons)
	}
	if v := metric(t, reg, "flowlens_packetdrops_total", "PACKET_SOCK_ERROR"); v != 0 {
		t.Errorf("flowlens_packetdrops_total{reason=PACKET_SOCK_ERROR} = %v: copies for a packet socket counted as lost packets", v)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
