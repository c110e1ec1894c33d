package shard

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
)

func randomTuple(r *rand.Rand) flow.Tuple {
	var src, dst netip.Addr
	if r.IntN(2) == 0 {
		src = netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
		dst = netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
	} else {
		var a, b [16]byte
		a[0], b[0] = 0xfd, 0xfd
		for i := 8; i < 16; i++ {
			a[i], b[i] = byte(r.IntN(256)), byte(r.IntN(256))
		}
		src, dst = netip.AddrFrom16(a), netip.AddrFrom16(b)
	}
	// Small port ranges make equal addresses with different ports, and
	// equal ports, common enough to exercise the tie-breaks.
	return flow.NewTuple(src, dst, uint16(r.IntN(4)), uint16(r.IntN(4)), []uint8{flow.ProtoTCP, flow.ProtoUDP}[r.IntN(2)])
}

func TestKeyIsTheSameForBothOrientations(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		tu := randomTuple(r)
		if Key(tu) != Key(tu.Reverse()) {
			t.Fatalf("Key(%v) = %x, Key(reverse) = %x", tu, Key(tu), Key(tu.Reverse()))
		}
	}
}

func TestKeyTellsConnectionsApart(t *testing.T) {
	base := flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.1.2"), 40000, 80, flow.ProtoTCP)
	variants := []flow.Tuple{
		flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.1.2"), 40001, 80, flow.ProtoTCP),
		flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.1.2"), 40000, 81, flow.ProtoTCP),
		flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.1.2"), 40000, 80, flow.ProtoUDP),
		flow.NewTuple(netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.1.2"), 40000, 80, flow.ProtoTCP),
		// Same endpoints, ports swapped between them: another connection.
		flow.NewTuple(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.1.2"), 80, 40000, flow.ProtoTCP),
	}
	for _, v := range variants {
		if Key(v) == Key(base) {
			t.Errorf("Key(%v) == Key(%v)", v, base)
		}
	}
}
