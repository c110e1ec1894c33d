package shard

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
)

// wideTuple draws a tuple from the whole address and port space, IPv4 or
// IPv6, so that keys cover what real clusters produce; randomTuple (in
// key_test.go) covers the tie-breaks of equal addresses and ports.
func wideTuple(r *rand.Rand) flow.Tuple {
	var src, dst netip.Addr
	if r.IntN(2) == 0 {
		var a, b [4]byte
		for i := range a {
			a[i], b[i] = byte(r.IntN(256)), byte(r.IntN(256))
		}
		src, dst = netip.AddrFrom4(a), netip.AddrFrom4(b)
	} else {
		var a, b [16]byte
		for i := range a {
			a[i], b[i] = byte(r.IntN(256)), byte(r.IntN(256))
		}
		src, dst = netip.AddrFrom16(a), netip.AddrFrom16(b)
	}
	return flow.NewTuple(src, dst, uint16(r.IntN(65536)), uint16(r.IntN(65536)),
		[]uint8{flow.ProtoTCP, flow.ProtoUDP, flow.ProtoICMP}[r.IntN(3)])
}

// replicaIDs names n replicas the two ways agents see them: pod IPs from a
// headless Service, or StatefulSet names. Such ids differ in one or two
// characters, the hard case for a weak hash.
func replicaIDs(n int, byName bool) []string {
	ids := make([]string, n)
	for i := range ids {
		if byName {
			ids[i] = fmt.Sprintf("flowlens-aggregator-%d.flowlens-aggregator.flowlens.svc:4739", i)
		} else {
			ids[i] = fmt.Sprintf("10.244.%d.%d:4739", i/3, 10+i)
		}
	}
	return ids
}

func TestOwnerIsTheSameForBothOrientations(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	rings := []*Ring{NewRing(replicaIDs(2, false)...), NewRing(replicaIDs(3, true)...), NewRing(replicaIDs(8, false)...)}
	v4, v6 := 0, 0
	for i := 0; i < 100000; i++ {
		tu := wideTuple(r)
		if i%2 == 1 {
			tu = randomTuple(r) // equal addresses or ports, both families
		}
		if tu.IsIPv4() {
			v4++
		} else {
			v6++
		}
		for _, ring := range rings {
			a, b := ring.Owner(Key(tu)), ring.Owner(Key(tu.Reverse()))
			if a != b || a < 0 {
				t.Fatalf("ring of %d: %v goes to %d, its reverse to %d", ring.Len(), tu, a, b)
			}
		}
	}
	// The property must have been tried on both families.
	if v4 < 40000 || v6 < 40000 {
		t.Fatalf("%d IPv4 and %d IPv6 tuples: generator is skewed", v4, v6)
	}
}

const ringKeys = 100000

// tolerance is how far a replica's share of ringKeys keys may be from its
// expectation: 5% of ringKeys/n, which is at least six standard deviations
// of the binomial count for every n <= 8 (n=8: sd 105, tolerance 625), so a
// fair hash fails this with probability below 1e-8 and a biased one (a
// replica getting 1.05x its share) fails it.
func tolerance(n int) float64 { return 0.05 * float64(ringKeys) / float64(n) }

func ownersOf(ring *Ring, keys []uint64) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = ring.OwnerID(k)
	}
	return out
}

func randomKeys(seed uint64) []uint64 {
	r := rand.New(rand.NewPCG(seed, 99))
	keys := make([]uint64, ringKeys)
	for i := range keys {
		keys[i] = Key(wideTuple(r))
	}
	return keys
}

func TestEveryReplicaGetsItsShare(t *testing.T) {
	keys := randomKeys(5)
	for n := 2; n <= 8; n++ {
		for _, byName := range []bool{false, true} {
			ring := NewRing(replicaIDs(n, byName)...)
			count := map[string]int{}
			for _, o := range ownersOf(ring, keys) {
				count[o]++
			}
			if len(count) != n {
				t.Fatalf("ring of %d: keys went to %d replicas", n, len(count))
			}
			for id, c := range count {
				if d := math.Abs(float64(c) - float64(ringKeys)/float64(n)); d > tolerance(n) {
					t.Errorf("ring of %d: %s owns %d keys, want %d ± %.0f", n, id, c, ringKeys/n, tolerance(n))
				}
			}
		}
	}
}

func TestRemovingAReplicaMovesOnlyItsShare(t *testing.T) {
	keys := randomKeys(6)
	for n := 3; n <= 8; n++ {
		for _, byName := range []bool{false, true} {
			ids := replicaIDs(n, byName)
			full := ownersOf(NewRing(ids...), keys)
			for gone := range ids {
				rest := append(append([]string(nil), ids[:gone]...), ids[gone+1:]...)
				after := ownersOf(NewRing(rest...), keys)
				moved := 0
				movedTo := map[string]int{}
				for i := range keys {
					if full[i] == after[i] {
						continue
					}
					if full[i] != ids[gone] {
						t.Fatalf("ring of %d without %s: key %x moved from %s, which stayed", n, ids[gone], keys[i], full[i])
					}
					moved++
					movedTo[after[i]]++
				}
				want := float64(ringKeys) / float64(n)
				if math.Abs(float64(moved)-want) > tolerance(n) {
					t.Errorf("ring of %d without %s: %d keys moved, want %.0f ± %.0f", n, ids[gone], moved, want, tolerance(n))
				}
				// Its keys spread over all the others, not onto one
				// neighbour (which would double that one's load).
				for _, id := range rest {
					share := want / float64(n-1)
					if math.Abs(float64(movedTo[id])-share) > 0.15*share {
						t.Errorf("ring of %d without %s: %d of its keys went to %s, want about %.0f", n, ids[gone], movedTo[id], id, share)
					}
				}
				// Adding it back restores every assignment.
				back := ownersOf(NewRing(append(rest, ids[gone])...), keys)
				for i := range keys {
					if back[i] != full[i] {
						t.Fatalf("ring of %d with %s back: key %x owned by %s, before by %s", n, ids[gone], keys[i], back[i], full[i])
					}
				}
			}
		}
	}
}

func TestRingIgnoresOrderAndDuplicates(t *testing.T) {
	a := NewRing("b:1", "a:1", "c:1")
	b := NewRing("c:1", "a:1", "b:1", "a:1")
	if b.Len() != 3 {
		t.Fatalf("duplicates counted: %v", b.Members())
	}
	for _, k := range randomKeys(7)[:10000] {
		if a.OwnerID(k) != b.OwnerID(k) {
			t.Fatalf("key %x: %s vs %s", k, a.OwnerID(k), b.OwnerID(k))
		}
	}
	if got := NewRing().Owner(1); got != -1 {
		t.Errorf("empty ring owner %d, want -1", got)
	}
	if got := NewRing().OwnerID(1); got != "" {
		t.Errorf("empty ring owner id %q", got)
	}
}

// Agents of different versions must agree on every assignment while they
// are rolled out one by one: these pinned owners fail when the scoring
// changes, which must then be treated as an incompatible change.
// Re-pinned when Key gained its final mix (raw FNV-1a put connections that
// differ only in an even ephemeral port on one ClickHouse shard of two).
func TestOwnersArePinned(t *testing.T) {
	ring := NewRing("10.0.0.1:4739", "10.0.0.2:4739", "10.0.0.3:4739")
	cases := []struct {
		tuple flow.Tuple
		want  string
	}{
		{flow.NewTuple(netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("10.2.0.7"), 40000, 80, flow.ProtoTCP), "10.0.0.2:4739"},
		{flow.NewTuple(netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), 5353, 53, flow.ProtoUDP), "10.0.0.2:4739"},
		{flow.NewTuple(netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("192.168.1.1"), 1, 2, flow.ProtoTCP), "10.0.0.3:4739"},
	}
	for _, c := range cases {
		if got := ring.OwnerID(Key(c.tuple)); got != c.want {
			t.Errorf("%v: owner %s, pinned %s", c.tuple, got, c.want)
		}
	}
}
