package flow

import (
	"net/netip"
	"testing"
)

func TestFormsAndDirectionOfATranslatedConnection(t *testing.T) {
	client, vip, pod, snat := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.96.0.10"),
		netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("192.168.1.2")
	c := Conn{Tuple: NewTuple(client, pod, 40000, 8080, ProtoTCP), OrigDstIP: vip.As16(), OrigDstPort: 80}
	if _, n := c.Forms(); n != 2 {
		t.Fatalf("DNATed connection: %d forms, want 2", n)
	}
	c.ProxySnatIP, c.ProxySnatPort = snat.As16(), 50000
	forms, n := c.Forms()
	if n != 3 || forms[0] != c.Tuple {
		t.Fatalf("forms %v (n %d): want Tuple first and 3 forms", forms, n)
	}
	cases := []struct {
		name    string
		t       Tuple
		fwd, ok bool
	}{
		{"client socket, dialled the VIP", NewTuple(client, vip, 40000, 80, ProtoTCP), true, true},
		{"server socket, sees the SNAT source", NewTuple(pod, snat, 8080, 50000, ProtoTCP), false, true},
		{"reply as the client receives it", NewTuple(vip, client, 80, 40000, ProtoTCP), false, true},
		{"packet after DNAT", c.Tuple, true, true},
		{"another port", NewTuple(client, vip, 40001, 80, ProtoTCP), false, false},
		{"another protocol", NewTuple(client, vip, 40000, 80, ProtoUDP), false, false},
	}
	for _, tc := range cases {
		fwd, ok := c.DirectionOf(tc.t)
		if fwd != tc.fwd || ok != tc.ok {
			t.Errorf("%s: DirectionOf = (%v, %v), want (%v, %v)", tc.name, fwd, ok, tc.fwd, tc.ok)
		}
	}
	plain := Conn{Tuple: NewTuple(client, pod, 1, 2, ProtoUDP)}
	plain.OrigDstIP, plain.OrigDstPort = plain.Tuple.DstIP, 2
	if _, n := plain.Forms(); n != 1 {
		t.Errorf("untranslated connection: %d forms, want 1", n)
	}
}
