package flow

import (
	"net/netip"
	"testing"
)

func TestProxySnat(t *testing.T) {
	var c Conn
	if _, ok := c.ProxySnat(); ok || c.IsSNATed() {
		t.Error("zero Conn reports a proxy SNAT")
	}
	for _, want := range []netip.AddrPort{
		netip.MustParseAddrPort("172.31.0.2:40123"),
		netip.MustParseAddrPort("[fd00:172:31::2]:1025"),
	} {
		c.ProxySnatIP, c.ProxySnatPort = want.Addr().As16(), want.Port()
		if got, ok := c.ProxySnat(); !ok || got != want {
			t.Errorf("ProxySnat() = %v, %v; want %v", got, ok, want)
		}
	}
}

// A source-NATed connection is keyed by what the node it was handed to
// sees: the translated source, the same destination.
func TestCorrelationTuple(t *testing.T) {
	client, pod := netip.MustParseAddrPort("192.0.2.9:51234"), netip.MustParseAddrPort("10.244.2.2:8080")
	snat := netip.MustParseAddrPort("172.18.0.2:40001")
	var c Conn
	c.Tuple = NewTuple(client.Addr(), pod.Addr(), client.Port(), pod.Port(), ProtoTCP)
	if got := c.CorrelationTuple(); got != c.Tuple {
		t.Errorf("not SNATed: %v, want the tuple %v", got, c.Tuple)
	}
	c.ProxySnatIP, c.ProxySnatPort = snat.Addr().As16(), snat.Port()
	want := NewTuple(snat.Addr(), pod.Addr(), snat.Port(), pod.Port(), ProtoTCP)
	if got := c.CorrelationTuple(); got != want {
		t.Errorf("SNATed: %v, want the far node's view %v", got, want)
	}
	// ICMP: the identifier stays, only the address was translated.
	c.Tuple = NewTuple(client.Addr(), pod.Addr(), 77, 8<<8, ProtoICMP)
	c.ProxySnatPort = 0
	want = NewTuple(snat.Addr(), pod.Addr(), 77, 8<<8, ProtoICMP)
	if got := c.CorrelationTuple(); got != want {
		t.Errorf("SNATed ICMP: %v, want %v", got, want)
	}
}
