//go:build integration

package packetdrops

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
)

// reviewIP runs ip(8) and fails the test on error.
func reviewIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
	}
}

// TestReviewPromiscBridgeCopiesAreNotDrops: on a bridged node whose
// bridge is promiscuous (kubelet's hairpin-mode promiscuous-bridge, the
// kubenet default; or anyone running tcpdump on cni0), the bridge
// forwards each pod-to-pod frame to its port AND passes a copy up to the
// node's stack, where ip_rcv frees it with SKB_DROP_REASON_OTHERHOST. The
// original reached the pod: nothing was lost. Every datagram below is
// answered, so the flow must carry no drops.
func TestReviewPromiscBridgeCopiesAreNotDrops(t *testing.T) {
	nsNode, nsA, nsB := "rvbr-node", "rvbr-a", "rvbr-b"
	for _, ns := range []string{nsNode, nsA, nsB} {
		_ = exec.Command("ip", "netns", "del", ns).Run()
		reviewIP(t, "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		reviewIP(t, "-n", ns, "link", "set", "lo", "up")
	}
	reviewIP(t, "-n", nsNode, "link", "add", "br0", "type", "bridge")
	reviewIP(t, "-n", nsNode, "link", "add", "va", "type", "veth", "peer", "name", "eth0", "netns", nsA)
	reviewIP(t, "-n", nsNode, "link", "add", "vb", "type", "veth", "peer", "name", "eth0", "netns", nsB)
	for _, l := range []string{"va", "vb"} {
		reviewIP(t, "-n", nsNode, "link", "set", l, "master", "br0", "up")
	}
	reviewIP(t, "-n", nsNode, "link", "set", "br0", "up", "promisc", "on")
	a, b := netip.MustParseAddr("10.123.0.1"), netip.MustParseAddr("10.123.0.2")
	reviewIP(t, "-n", nsA, "addr", "add", a.String()+"/24", "dev", "eth0")
	reviewIP(t, "-n", nsB, "addr", "add", b.String()+"/24", "dev", "eth0")
	reviewIP(t, "-n", nsA, "link", "set", "eth0", "up")
	reviewIP(t, "-n", nsB, "link", "set", "eth0", "up")

	var srv, cli *net.UDPConn
	if err := netns.Do(netns.Path(nsB), func() (err error) {
		srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: b.AsSlice(), Port: 7100})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteToUDP(buf[:n], from)
		}
	}()
	if err := netns.Do(netns.Path(nsA), func() (err error) {
		cli, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: b.AsSlice(), Port: 7100})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	// Resolve the neighbours first (ARP), so every datagram below goes.
	_ = cli.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if _, err := cli.Write([]byte("warm")); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Read(buf); err != nil {
		t.Fatalf("warm-up echo: %v", err)
	}

	d, reg, _ := startDrops(t, Config{}, nil)
	const n = 40
	answered := 0
	for i := range n {
		_ = cli.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintf(cli, "req %d", i); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Read(buf); err == nil {
			answered++
		}
	}
	if answered != n {
		t.Fatalf("%d of %d datagrams answered: the setup lost packets", answered, n)
	}
	local := netip.MustParseAddrPort(cli.LocalAddr().String())
	conn := flow.Conn{Tuple: flow.NewTuple(local.Addr(), b, local.Port(), 7100, flow.ProtoUDP)}
	conn.OrigDstIP, conn.OrigDstPort = conn.Tuple.DstIP, conn.Tuple.DstPort
	fwd, rev, reasons := collect(t, d, conn, 1)
	time.Sleep(1500 * time.Millisecond) // one housekeeping: the kernel counters
	other := metric(t, reg, "flowlens_packetdrops_total", "OTHERHOST")
	if fwd != 0 || rev != 0 {
		t.Errorf("every one of %d datagrams and replies was delivered, yet the flow carries fwd %d rev %d drops (reasons %v)",
			n, fwd, rev, reasons)
	}
	if other != 0 {
		t.Errorf("flowlens_packetdrops_total{reason=OTHERHOST} = %v: the promiscuous bridge's copies counted as lost packets", other)
	}
}
