package shard

import (
	"fmt"
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

// The node that source-NATed a NodePort connection and the backend's node,
// which sees only the translated source, pick the same replica.
func TestRecordKeyJoinsTheSourceNATedConnection(t *testing.T) {
	client, pod := netip.MustParseAddrPort("192.0.2.9:51234"), netip.MustParseAddrPort("10.244.2.2:8080")
	snat := netip.MustParseAddrPort("172.18.0.2:40001")
	var entry, backend flow.Record
	entry.Tuple = flow.NewTuple(client.Addr(), pod.Addr(), client.Port(), pod.Port(), flow.ProtoTCP)
	entry.ProxySnatIP, entry.ProxySnatPort = snat.Addr().As16(), snat.Port()
	backend.Tuple = flow.NewTuple(snat.Addr(), pod.Addr(), snat.Port(), pod.Port(), flow.ProtoTCP)
	if RecordKey(&entry) != RecordKey(&backend) {
		t.Errorf("entry node key %x, backend node key %x: the halves go to different replicas", RecordKey(&entry), RecordKey(&backend))
	}
	if RecordKey(&entry) == Key(entry.Tuple) {
		t.Error("the SNATed record is keyed by the client's tuple, which the backend's node never sees")
	}
	if RecordKey(&backend) != Key(backend.Tuple) {
		t.Error("a record without SNAT is not keyed by its tuple")
	}
}

// ClickHouse shards rows by connectionKey % n. Connections of one pod pair
// differ only in the client's ephemeral port, which Linux connect() steps
// by 2: they must still spread evenly over 2, 3 and 4 shards (raw FNV-1a put
// every one with both port bytes even on one of two shards).
func TestKeysOfConsecutivePortsSpreadOverShards(t *testing.T) {
	src, dst := netip.MustParseAddr("10.244.1.17"), netip.MustParseAddr("10.244.2.33")
	portSets := map[string][]int{}
	for _, start := range []int{32768, 32769} {
		name := fmt.Sprintf("%d, %d+2, ... 65535", start, start)
		for p := start; p < 65536; p += 2 {
			portSets[name] = append(portSets[name], p)
		}
	}
	for p := 0; p < 65536; p++ {
		if p&0x0101 == 0 {
			portSets["both port bytes even"] = append(portSets["both port bytes even"], p)
		}
	}
	for _, proto := range []uint8{flow.ProtoTCP, flow.ProtoUDP} {
		for name, ports := range portSets {
			for n := 2; n <= 4; n++ {
				cnt := make([]int, n)
				for _, p := range ports {
					cnt[Key(flow.NewTuple(src, dst, uint16(p), 8080, proto))%uint64(n)]++
				}
				want := float64(len(ports)) / float64(n)
				for i, c := range cnt {
					// ±5% of an even share: over 3.5 standard deviations of
					// a uniform hash with these 16384 keys.
					if d := float64(c) - want; d > 0.05*want || d < -0.05*want {
						t.Errorf("proto %d, source ports %s: key %% %d = %d for %d keys, want %.0f±5%% (%v)",
							proto, name, n, i, c, want, cnt)
						break
					}
				}
			}
		}
	}
}

// Aggregators and agents of different versions compute connectionKey for
// the same ClickHouse shards: a change to these values is incompatible.
func TestKeysArePinned(t *testing.T) {
	cases := []struct {
		tuple flow.Tuple
		want  uint64
	}{
		{flow.NewTuple(netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("10.2.0.7"), 40000, 80, flow.ProtoTCP), 0x35ace303bd7e1d0a},
		{flow.NewTuple(netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 5353, 53, flow.ProtoUDP), 0xc04a94782c972a64},
	}
	for _, c := range cases {
		if got := Key(c.tuple); got != c.want {
			t.Errorf("Key(%v) = %#x, pinned %#x", c.tuple, got, c.want)
		}
	}
}
