package connstore

import (
	"testing"

	"github.com/flowlens/flowlens/pkg/flow"
)

func TestIndexDeleteKeepsProbeRunsReachable(t *testing.T) {
	const last = minIndexSlots - 1
	tests := []struct {
		name   string
		homes  []uint64 // home slot of idx 0, 1, 2, ...
		delete uint32   // idx removed
	}{
		{"run wrapping past the end, head removed", []uint64{last, last, last, 0}, 0},
		{"run wrapping past the end, middle removed", []uint64{last, last, 0, last}, 1},
		{"entry at its home after the hole stays", []uint64{5, 5, 7, 6}, 0},
		{"two interleaved runs", []uint64{last - 1, last, last - 1, 0, last}, 2},
		{"only entry removed", []uint64{3}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var x index
			// A hash whose home is slot p of the table (minIndexSlots
			// slots: no insert here grows it).
			hashes := make([]uint64, len(tt.homes))
			for i, home := range tt.homes {
				hashes[i] = hashAt(home, minIndexSlots)
				x.insert(hashes[i], uint32(i))
			}
			if len(x.slots) != minIndexSlots {
				t.Fatalf("table of %d slots, want %d", len(x.slots), minIndexSlots)
			}
			for i, home := range tt.homes {
				if got := slotHome(packSlot(hashes[i], uint32(i)), len(x.slots)); got != int(home) {
					t.Fatalf("idx %d: home %d, want %d", i, got, home)
				}
			}
			p := x.posOf(hashes[tt.delete], tt.delete)
			if p < 0 {
				t.Fatalf("idx %d not found before delete", tt.delete)
			}
			x.deleteAt(p)
			if x.posOf(hashes[tt.delete], tt.delete) >= 0 {
				t.Fatalf("idx %d still found after delete", tt.delete)
			}
			for i, h := range hashes {
				if uint32(i) != tt.delete && x.posOf(h, uint32(i)) < 0 {
					t.Fatalf("idx %d (home %d) unreachable after deleting idx %d; slots near end/start: %x %x",
						i, tt.homes[i], tt.delete, x.slots[last-2:], x.slots[:4])
				}
			}
			if x.n != len(tt.homes)-1 {
				t.Fatalf("n = %d, want %d", x.n, len(tt.homes)-1)
			}
		})
	}
}

// hashAt returns a hash whose home slot is p in a table of size slots.
func hashAt(p uint64, size int) uint64 {
	// homeOf(tag, size) = tag*size >> 32: the smallest tag at or above
	// p<<32 / size.
	return (p<<32 + uint64(size) - 1) / uint64(size)
}

func TestIndexGrowsByHalfAndKeepsEveryKey(t *testing.T) {
	var x index
	const n = 100_000
	hash := func(i int) uint64 { return mix(uint64(i), 0x9e3779b97f4a7c15) }
	sizes := []int{}
	for i := 0; i < n; i++ {
		before := len(x.slots)
		x.insert(hash(i), uint32(i))
		if len(x.slots) != before {
			sizes = append(sizes, len(x.slots))
		}
		if x.n*4 > len(x.slots)*3 {
			t.Fatalf("%d keys in %d slots: above 3/4 load", x.n, len(x.slots))
		}
	}
	for i := 1; i < len(sizes); i++ {
		if want := sizes[i-1] + sizes[i-1]/2; sizes[i] != want {
			t.Fatalf("grew from %d to %d slots, want %d", sizes[i-1], sizes[i], want)
		}
	}
	if load := float64(n) / float64(len(x.slots)); load < 0.5 {
		t.Errorf("%d keys in %d slots: load %.2f, want at least 1/2 right after growing", n, len(x.slots), load)
	}
	for i := 0; i < n; i += 7 {
		if x.posOf(hash(i), uint32(i)) < 0 {
			t.Fatalf("key %d lost after growing", i)
		}
	}
	for i := 0; i < n; i += 2 {
		x.deleteAt(x.posOf(hash(i), uint32(i)))
	}
	for i := 0; i < n; i++ {
		if found := x.posOf(hash(i), uint32(i)) >= 0; found != (i%2 == 1) {
			t.Fatalf("key %d found %v after deleting the even ones", i, found)
		}
	}
	if mapped := len(x.slots)*8 >= indexHeapBytes; mapped != x.mem.Mapped() {
		t.Errorf("a table of %d bytes mapped %v, want %v", len(x.slots)*8, x.mem.Mapped(), mapped)
	}
	if err := x.release(); err != nil {
		t.Fatal(err)
	}
}

func TestHashSpreadsSimilarTuples(t *testing.T) {
	s, _ := newBenchStore(t, 100_000, func(*flow.Record) {})
	for i := 0; i < 100_000; i++ {
		c := synthConn(i)
		s.Upsert(&c, t0)
	}
	for name, x := range map[string]*index{"byTuple": &s.byTuple, "byVIP": &s.byVIP} {
		size := len(x.slots)
		var total, worst uint64
		for p, sl := range x.slots {
			if sl == 0 {
				continue
			}
			d := uint64((p - slotHome(sl, size) + size) % size)
			total += d
			worst = max(worst, d)
		}
		if avg := float64(total) / float64(x.n); avg > 1 || worst > 64 {
			t.Errorf("%s: %d entries in %d slots probe %.2f slots on average, %d at worst; want <= 1 and <= 64",
				name, x.n, len(x.slots), avg, worst)
		}
	}
}
