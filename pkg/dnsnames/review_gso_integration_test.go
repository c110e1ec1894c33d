//go:build integration

package dnsnames

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/netnstest"
)

// TestReviewPagedPayloadMissed: the program reads the DNS header by direct
// packet access, so a response whose DNS header is not in the skb's
// linear part is skipped, silently (no counter). The comment in
// bpf/dnsnames.c says UDP from a pod or a resolver has it there; a UDP
// GSO packet does not (its payload is in page fragments, under one UDP
// header whose length is the total), and neither does a packet from a
// driver that pulls only the L2-L4 headers into the linear part
// (eth_get_headlen stops after the UDP header). Here the DNS pod sends
// two equal-size responses in one UDP_SEGMENT send; the client receives
// both datagrams, no ring event is written and neither name is learnt.
// (Had the packet been linear, as a UDP GRO super-packet's head is, the
// two messages would be copied up as one and only the first parsed: see
// TestReviewConcatenatedMessages.)
func TestReviewPagedPayloadMissed(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "dnsgso", Pods: []netnstest.PodSpec{{Name: "dns"}, {Name: "client"}}})
	dns, client := node.Pod("dns"), node.Pod("client")
	n, err := New(Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	runNames(t, n)
	attachAll(t, n, node)

	var cl, srv *net.UDPConn
	if err := client.Run(func() (err error) {
		cl, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(client.Addr(40053)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := dns.Run(func() (err error) {
		srv, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(dns.Addr(53)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// Warm the neighbour entries with one plain response.
	warm := msg(t, resp("warm.example.test."), rr{name: "warm.example.test.", typ: dnsmessage.TypeA, ttl: 300, data: "203.0.113.9"})
	if _, err := srv.WriteToUDPAddrPort(warm, client.Addr(40053)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	_ = cl.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, _, err := cl.ReadFromUDPAddrPort(buf); err != nil {
		t.Fatal(err)
	}

	m1 := msg(t, resp("one.example.test."), rr{name: "one.example.test.", typ: dnsmessage.TypeA, ttl: 300, data: "203.0.113.11"})
	m2 := msg(t, resp("two.example.test."), rr{name: "two.example.test.", typ: dnsmessage.TypeA, ttl: 300, data: "203.0.113.12"})
	if len(m1) != len(m2) {
		t.Fatalf("sizes %d and %d: GSO needs equal segments", len(m1), len(m2))
	}
	raw, err := srv.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, len(m1)) }); err != nil || serr != nil {
		t.Fatalf("UDP_SEGMENT: %v %v", err, serr)
	}
	if _, err := srv.WriteToUDPAddrPort(append(append([]byte{}, m1...), m2...), client.Addr(40053)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		k, _, err := cl.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i+1, err)
		}
		if k != len(m1) {
			t.Fatalf("datagram %d: %d bytes, want one response of %d", i+1, k, len(m1))
		}
	}
	for _, c := range []struct {
		addr, name string
		sport      uint16
	}{{"203.0.113.11", "one.example.test", 1}, {"203.0.113.12", "two.example.test", 2}} {
		got := waitNamed(n, func() *flow.Record { return flowRecord(client, client.IPv4, netip.MustParseAddr(c.addr), c.sport) })
		if got != c.name {
			n.syncStats()
			t.Errorf("client -> %s (a response the client received) named %q, want %s (ring events %v: only the warm-up response; nothing counts the skipped one)",
				c.addr, got, c.name, value(n.metrics.kernel[statEvents]))
		}
	}
}
