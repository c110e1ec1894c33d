//go:build integration

package dnsnames

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/test/netnstest"
)

// TestGSODatagramsPassedUpOneByOne: the program splits a UDP GSO packet
// by its gso_size itself, one ring event per datagram (the last one
// shorter), so no message depends on handle's fallback for concatenated
// payloads; past 64 datagrams in one packet the rest is counted, not read.
func TestGSODatagramsPassedUpOneByOne(t *testing.T) {
	node := netnstest.NewNodeT(t, netnstest.Config{Name: "dnsseg", Pods: []netnstest.PodSpec{{Name: "dns"}, {Name: "client"}}})
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
	buf := make([]byte, 65536)
	// send writes msgs in one UDP_SEGMENT send of segment size seg and
	// reads the datagrams the client receives.
	send := func(seg int, msgs ...[]byte) {
		t.Helper()
		raw, err := srv.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, seg) }); err != nil || serr != nil {
			t.Fatalf("UDP_SEGMENT: %v %v", err, serr)
		}
		var all []byte
		for _, m := range msgs {
			all = append(all, m...)
		}
		if _, err := srv.WriteToUDPAddrPort(all, client.Addr(40053)); err != nil {
			t.Fatal(err)
		}
		_ = cl.SetReadDeadline(time.Now().Add(3 * time.Second))
		for i := range msgs {
			k, _, err := cl.ReadFromUDPAddrPort(buf)
			if err != nil || k != len(msgs[i]) {
				t.Fatalf("datagram %d: %d bytes (want %d), %v", i+1, k, len(msgs[i]), err)
			}
		}
	}
	warm := answerFor(t, "warm.example.test", 300, "203.0.113.9")
	send(len(warm), warm) // one segment: a plain datagram; warms the neighbours
	time.Sleep(100 * time.Millisecond)
	n.syncStats()
	base := value(n.metrics.kernel[statEvents])

	m1 := answerFor(t, "one.example.test", 300, "203.0.113.11")
	m2 := answerFor(t, "two.example.test", 300, "203.0.113.12")
	m3 := answerFor(t, "x.example.test", 300, "203.0.113.13") // shorter: the last datagram
	send(len(m1), m1, m2, m3)
	for i, c := range []struct{ addr, name string }{{"203.0.113.11", "one.example.test"}, {"203.0.113.12", "two.example.test"}, {"203.0.113.13", "x.example.test"}} {
		got := waitNamed(n, func() *flow.Record { return flowRecord(client, client.IPv4, netip.MustParseAddr(c.addr), uint16(i+1)) })
		if got != c.name {
			t.Errorf("-> %s: %q, want %s", c.addr, got, c.name)
		}
	}
	n.syncStats()
	if got := value(n.metrics.kernel[statEvents]) - base; got != 3 {
		t.Errorf("%v ring events for a GSO packet of 3 responses, want 3 (one per datagram)", got)
	}
	if got := value(n.metrics.parseErrors); got != 0 {
		t.Errorf("parse_errors_total %v", got)
	}

	// 70 equal datagrams in one packet: 64 read, the packet counted.
	var many [][]byte
	for i := 0; i < 70; i++ {
		many = append(many, answerFor(t, fmt.Sprintf("m%02d.example.test", i), 300, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String()))
	}
	base = value(n.metrics.kernel[statEvents])
	send(len(many[0]), many...)
	time.Sleep(200 * time.Millisecond)
	n.syncStats()
	if got := value(n.metrics.kernel[statEvents]) - base; got != 64 {
		t.Errorf("%v ring events for a GSO packet of 70 responses, want the bound 64", got)
	}
	if got := value(n.metrics.kernel[statSegsSkipped]); got != 1 {
		t.Errorf("segments_skipped_total %v, want 1", got)
	}
	if got := waitNamed(n, func() *flow.Record {
		return flowRecord(client, client.IPv4, netip.AddrFrom4([4]byte{198, 51, 100, 63}), 100)
	}); got != "m63.example.test" {
		t.Errorf("64th datagram: %q", got)
	}
	if got := enrichOnce(n, flowRecord(client, client.IPv4, netip.AddrFrom4([4]byte{198, 51, 100, 64}), 101)); got != "" {
		t.Errorf("65th datagram (past the bound) named %q", got)
	}
}
